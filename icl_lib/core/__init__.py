"""The core: the theorem's updates, the patched runs, the dynamics and the measurements on them.

It imports nothing specific to any architecture: models reach it through the interface of
:mod:`icl_lib.core.architecture`, which :mod:`icl_lib.architectures` implements.
"""
