"""Reproducibility: one call seeds every generator and fixes the thread count."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

__all__ = ["seed_everything", "single_thread", "THREADS_ENV"]

THREADS_ENV = "ICL_LIB_THREADS"


def seed_everything(seed: int, threads: int | None = None) -> None:
    """Seed Python, NumPy and torch, and fix torch's intra-op thread count.

    Args:
        seed: a non-negative int.
        threads: torch threads; default: the ``ICL_LIB_THREADS`` environment variable, else 1.
            One thread makes floating-point reductions independent of the machine's core count.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if threads is None:
        raw = os.environ.get(THREADS_ENV, "1")
        if not raw.isdigit() or int(raw) < 1:
            raise ValueError(f"{THREADS_ENV} must be a positive integer, got {raw!r}")
        threads = int(raw)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)


@contextmanager
def single_thread() -> Iterator[None]:
    """Run the enclosed code on one torch thread, then restore the caller's thread count.

    Long iterative computations (training, fine-tuning) amplify round-off: with two threads a
    matrix product may add its terms in another order, and after thousands of optimiser steps
    the weights differ in their third digit. On one thread they do not depend on the caller's
    thread count. Usable as a decorator: ``@single_thread()``.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
