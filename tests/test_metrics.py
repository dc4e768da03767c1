"""The Frobenius alignment of matrices."""

from __future__ import annotations

import pytest
import torch

import icl_lib as icl


def test_alignment_of_a_matrix_with_itself_and_its_negative():
    a = torch.randn(5, 4, 3, dtype=torch.float64)
    assert torch.allclose(icl.frobenius_alignment(a, a), torch.ones(5, dtype=torch.float64), atol=1e-14)
    assert torch.allclose(icl.frobenius_alignment(a, -a), -torch.ones(5, dtype=torch.float64), atol=1e-14)
    assert torch.allclose(icl.frobenius_alignment(a, 3.5 * a), torch.ones(5, dtype=torch.float64), atol=1e-14)


def test_alignment_of_orthogonal_matrices_and_a_known_angle():
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    assert icl.frobenius_alignment(a, b).item() == 0.0
    c = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert icl.frobenius_alignment(a, c).item() == pytest.approx(2**-0.5)


def test_alignment_batches_over_leading_axes():
    a, b = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    got = icl.frobenius_alignment(a, b)
    assert got.shape == (2, 3)
    want = torch.nn.functional.cosine_similarity(a.flatten(-2), b.flatten(-2), dim=-1)
    assert torch.allclose(got, want, atol=1e-6)
    assert (got.abs() <= 1 + 1e-6).all()


def test_alignment_bad_inputs():
    with pytest.raises(ValueError, match="zero matrix"):
        icl.frobenius_alignment(torch.zeros(2, 2), torch.ones(2, 2))
    with pytest.raises(ValueError, match="share a shape"):
        icl.frobenius_alignment(torch.ones(2, 2), torch.ones(2, 3))
    with pytest.raises(ValueError, match="share a shape"):
        icl.frobenius_alignment(torch.ones(3), torch.ones(3))
    with pytest.raises(TypeError, match="dtype|float"):
        icl.frobenius_alignment(torch.ones(2, 2), torch.ones(2, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating"):
        icl.frobenius_alignment(torch.ones(2, 2, dtype=torch.int64), torch.ones(2, 2, dtype=torch.int64))
