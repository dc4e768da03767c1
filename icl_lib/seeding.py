"""Reproducibility: one call seeds every generator and fixes the thread count."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["seed_everything", "THREADS_ENV"]

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
