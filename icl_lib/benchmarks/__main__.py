"""``python -m icl_lib.benchmarks``: the benchmark (see :mod:`icl_lib.benchmarks.bench`)."""

import sys

from .bench import main

sys.exit(main())
