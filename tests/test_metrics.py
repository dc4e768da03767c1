"""The relative error of a batch and the Frobenius alignment of matrices."""

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


def test_relative_error_known_values():
    # differences got − want = (0, 1) and (2, 0); reference norms ‖want‖ = 5 and 2
    want = torch.tensor([[3.0, 4.0], [0.0, 2.0]], dtype=torch.float64)
    got = torch.tensor([[3.0, 5.0], [2.0, 2.0]], dtype=torch.float64)
    err = icl.relative_error(got, want)
    assert err.shape == (2,)
    assert err.tolist() == pytest.approx([1 / 5, 2 / 2])
    # not symmetric: the reference is the second argument
    assert icl.relative_error(want, got).tolist() == pytest.approx([1 / 34**0.5, 2 / 8**0.5])
    assert icl.relative_error(want, want).tolist() == [0.0, 0.0]


def test_relative_error_takes_the_norm_over_every_axis_after_the_first():
    want = torch.randn(4, 3, 5, 2, dtype=torch.float64)
    got = want + 1e-3 * torch.randn(4, 3, 5, 2, dtype=torch.float64)
    err = icl.relative_error(got, want)
    assert err.shape == (4,)
    for k in range(4):  # each example as a whole, a Frobenius-type norm
        ratio = torch.linalg.vector_norm(got[k] - want[k]) / torch.linalg.vector_norm(want[k])
        assert err[k].item() == pytest.approx(ratio.item(), rel=1e-12)
    # a batch of scalars: |got − want| / |want|
    scalars = icl.relative_error(torch.tensor([1.5, -2.0]), torch.tensor([1.0, -4.0]))
    assert scalars.tolist() == pytest.approx([0.5, 0.5])


def test_relative_error_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        icl.relative_error(torch.ones(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="same shape"):
        icl.relative_error(torch.ones(2, 3), torch.ones(3, 2))
    with pytest.raises(ValueError, match="batch axis"):
        icl.relative_error(torch.tensor(1.0), torch.tensor(2.0))
    with pytest.raises(ValueError, match=r"zero for batch element\(s\) \[1\]"):
        icl.relative_error(torch.ones(2, 3), torch.tensor([[1.0, 0, 0], [0, 0, 0]]))
    with pytest.raises(TypeError, match="float64"):
        icl.relative_error(torch.ones(2, 2), torch.ones(2, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating"):
        icl.relative_error(torch.ones(2, 2, dtype=torch.int64), torch.ones(2, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensors"):
        icl.relative_error([[1.0]], torch.ones(1, 1))


def test_alignment_factors_multiply_to_the_frobenius_cosine():
    generator = torch.Generator().manual_seed(0)
    F = torch.randn(6, 7, 5, 3, generator=generator, dtype=torch.float64)
    u = torch.randn(6, 7, 5, generator=generator, dtype=torch.float64)
    a = torch.randn(6, 7, 3, generator=generator, dtype=torch.float64)
    rank_one = u[..., :, None] * a[..., None, :] / (a * a).sum(-1)[..., None, None]
    cosine, share = icl.alignment_factors(F, u, a)
    assert cosine.shape == share.shape == (6, 7)
    assert torch.allclose(cosine * share, icl.frobenius_alignment(F, rank_one), atol=1e-14)
    assert (share <= 1 + 1e-14).all() and (share > 0).all() and (cosine.abs() <= 1 + 1e-14).all()
    # a matrix whose rows lie along a has share 1, and its cosine is the cosine of its left factor
    g = torch.randn(6, 7, 5, generator=generator, dtype=torch.float64)
    along = g[..., :, None] * a[..., None, :]
    cosine, share = icl.alignment_factors(along, u, a)
    assert torch.allclose(share, torch.ones_like(share), atol=1e-14)
    assert torch.allclose(cosine, torch.nn.functional.cosine_similarity(g, u, dim=-1), atol=1e-14)
    # a matrix that annihilates a has no cosine at a
    orthogonal = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    with pytest.raises(ValueError, match="F a is zero"):
        icl.alignment_factors(orthogonal, torch.ones(2), torch.tensor([1.0, 0.0]))


def test_alignment_factors_bad_inputs():
    F, u, a = torch.ones(4, 3), torch.ones(4), torch.ones(3)
    with pytest.raises(ValueError, match="do not fit"):
        icl.alignment_factors(F, torch.ones(3), a)
    with pytest.raises(ValueError, match="do not fit"):
        icl.alignment_factors(F, u, torch.ones(4))
    with pytest.raises(ValueError, match="a is zero"):
        icl.alignment_factors(F, u, torch.zeros(3))
    with pytest.raises(TypeError, match="dtype"):
        icl.alignment_factors(F, u.double(), a)
    with pytest.raises(TypeError, match="floating"):
        icl.alignment_factors(F.long(), u.long(), a.long())
