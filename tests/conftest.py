"""Shared helpers for the unit tests."""

from __future__ import annotations

import pytest
import torch

# Relative tolerances the library promises for the theorem's identity (the contract).
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got − want| / max |want|: a scale-free error for whole output tensors."""
    assert got.shape == want.shape, (got.shape, want.shape)
    return ((got - want).abs().max() / want.abs().max()).item()


@pytest.fixture(autouse=True)
def _single_thread():
    torch.set_num_threads(1)
    yield
