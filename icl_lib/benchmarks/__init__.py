"""The benchmarks, outside the library's core: ``python -m icl_lib.benchmarks`` (see :mod:`.bench`)."""
