"""icl_lib.core.analysis: gaps per block and for the whole stack, every position, ranks, cosines."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import icl_lib as icl
from icl_lib.core import analysis

F64 = torch.float64


def small_stack(seed: int = 0, dtype: torch.dtype = F64) -> icl.Transformer:
    torch.manual_seed(seed)
    return icl.Transformer(8, 3, 16, n_heads=2, in_dim=3, out_dim=3).to(dtype)


def encoder_stack(norm_first: bool, dtype: torch.dtype = F64) -> nn.TransformerEncoder:
    torch.manual_seed(1)
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True, norm_first=norm_first)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).to(dtype).eval()


def tokens(batch: int, length: int, width: int, dtype: torch.dtype = F64, seed: int = 2) -> torch.Tensor:
    return torch.randn(batch, length, width, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- mean_sem ---------------------------------------------------------------------------------


def test_mean_sem_matches_the_textbook_formula():
    values = tokens(7, 3, 2)
    mean, sem = analysis.mean_sem(values)
    assert mean.shape == sem.shape == (3, 2)
    centred = values - values.sum(0) / 7
    want = (centred.pow(2).sum(0) / 6).sqrt() / math.sqrt(7)
    torch.testing.assert_close(sem, want)
    torch.testing.assert_close(mean, values.sum(0) / 7)


@pytest.mark.parametrize(
    "values, error",
    [
        ([1.0, 2.0], TypeError),
        (torch.ones(1, 3), ValueError),
        (torch.tensor(1.0), ValueError),
        (torch.ones(3, dtype=torch.int64), TypeError),
        (torch.tensor([1.0, float("nan")]), ValueError),
    ],
)
def test_mean_sem_refuses_bad_input(values, error):
    with pytest.raises(error):
        analysis.mean_sem(values)


# --- gaps -------------------------------------------------------------------------------------


def test_block_gaps_are_round_off_for_an_icl_stack():
    model = small_stack()
    gaps = analysis.block_gaps(model, tokens(4, 6, 3))
    assert gaps.shape == (4, 3) and gaps.dtype == F64
    assert gaps.max() < 1e-12


@pytest.mark.parametrize("norm_first", [True, False])
def test_block_and_network_gaps_for_pytorch_encoders(norm_first: bool):
    model = encoder_stack(norm_first)
    prompts = tokens(3, 5, 8)
    assert analysis.block_gaps(model, prompts).shape == (3, 2)
    assert analysis.block_gaps(model, prompts).max() < 1e-12
    assert analysis.network_gap(model, prompts).max() < 1e-12


def test_block_gaps_see_each_blocks_own_input():
    """Gap of block ℓ computed by hand from block_inputs, equal to what block_gaps returns."""
    model = small_stack(3)
    prompts = tokens(2, 5, 3)
    gaps = analysis.block_gaps(model, prompts)
    z = icl.block_inputs(model, prompts)[2]
    block = model.blocks[2]
    update = icl.implicit_update(block, z)
    want = (block(z)[:, -1] - icl.forward_with_update(block, update, z[:, -1:])).norm(dim=-1)
    torch.testing.assert_close(gaps[:, 2], want.detach(), atol=0.0, rtol=0.0)


def test_network_gap_is_round_off_and_the_patches_matter():
    model = small_stack(4)
    prompts = tokens(5, 7, 3)
    gap = analysis.network_gap(model, prompts)
    assert gap.shape == (5,) and gap.max() < 1e-12
    # Without the patches, the query alone gives a different output: the gap is not trivially zero.
    with torch.no_grad():
        unpatched = (model(prompts)[:, -1] - model(prompts[:, -1:])[:, -1]).norm(dim=-1)
    assert unpatched.min() > 1e-3


def test_float32_gaps_are_small_but_not_float64_small():
    model = small_stack(5, torch.float32)
    prompts = tokens(8, 9, 3, torch.float32)
    gaps = analysis.block_gaps(model, prompts)
    assert gaps.dtype == torch.float32 and gaps.max() < 1e-4


def test_gaps_refuse_bad_input():
    model = small_stack()
    with pytest.raises(ValueError, match="context is empty"):
        analysis.block_gaps(model, tokens(2, 1, 3))
    with pytest.raises(ValueError, match="context is empty"):
        analysis.network_gap(model, tokens(2, 1, 3))
    with pytest.raises(TypeError, match="dtype"):
        analysis.block_gaps(model, tokens(2, 4, 3, torch.float32))
    with pytest.raises(TypeError, match="unsupported model"):
        analysis.block_gaps(nn.Linear(3, 3), tokens(2, 4, 3))
    with pytest.raises(ValueError, match="width"):
        analysis.network_gap(model, tokens(2, 4, 5))


# --- every position, rank, cosines ------------------------------------------------------------


@pytest.mark.parametrize("variant", [dict(), dict(residual=True), dict(residual=True, layer_norm=True)])
def test_position_gaps_are_round_off_at_every_position(variant):
    torch.manual_seed(6)
    block = icl.Block(6, 12, n_heads=2, **variant).to(F64)
    gaps = analysis.position_gaps(block, tokens(3, 8, 6))
    assert gaps.shape == (3, 8) and gaps.max() < 1e-12


def test_summed_update_is_the_sum_of_the_dense_updates_and_has_rank_one():
    model = small_stack(7)
    z = icl.block_inputs(model, tokens(4, 9, 3))[1]
    update = icl.implicit_update(model.blocks[1], z, position="all")
    total = analysis.summed_update(update)
    assert total.shape == (4, 16, 8)
    torch.testing.assert_close(total, update.delta_W.sum(1))
    assert analysis.singular_value_ratio(total).max() < 1e-12
    # The query updates of different prompts have different right factors: their sum is not rank 1.
    query = icl.implicit_update(model.blocks[1], z)
    assert analysis.singular_value_ratio(query.delta_W.sum(0)) > 1e-2


def test_singular_value_ratio_of_known_matrices():
    diagonal = torch.diag(torch.tensor([3.0, 1.0, 0.5], dtype=F64))
    outer = torch.outer(torch.arange(1.0, 5.0, dtype=F64), torch.tensor([1.0, -2.0, 0.5], dtype=F64))
    ratio = analysis.singular_value_ratio(torch.stack([diagonal, outer[:3]]))
    assert abs(ratio[0].item() - 1 / 3) < 1e-15
    assert ratio[1].item() < 1e-15


@pytest.mark.parametrize(
    "matrices, error",
    [
        (torch.ones(3), ValueError),
        (torch.ones(3, 1), ValueError),
        (torch.zeros(2, 2), ValueError),
        (torch.ones(2, 2, dtype=torch.int64), TypeError),
        (torch.full((2, 2), float("inf")), ValueError),
    ],
)
def test_singular_value_ratio_refuses_bad_input(matrices, error):
    with pytest.raises(error):
        analysis.singular_value_ratio(matrices)


def test_update_cosines_equal_the_dense_frobenius_cosines():
    torch.manual_seed(8)
    block = icl.Block(6, 10, n_heads=2, residual=True, layer_norm=True).to(F64)
    update = icl.implicit_update(block, tokens(2, 5, 6), position="all")
    cosines = analysis.update_cosines(update)
    dense = update.delta_W.flatten(-2)  # (B, P, H·D)
    want = torch.einsum("bpk,bqk->bpq", dense, dense)
    want = want / (dense.norm(dim=-1)[:, :, None] * dense.norm(dim=-1)[:, None, :])
    assert cosines.shape == (2, 5, 5)
    torch.testing.assert_close(cosines, want, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.diagonal(cosines, dim1=1, dim2=2), torch.ones(2, 5, dtype=F64))


def test_stacked_helpers_refuse_unstacked_or_zero_updates():
    torch.manual_seed(9)
    block = icl.Block(4, 6, residual=True).to(F64)
    prompts = tokens(2, 4, 4)
    single = icl.implicit_update(block, prompts)
    with pytest.raises(ValueError, match="position='all'"):
        analysis.update_cosines(single)
    with pytest.raises(ValueError, match="position='all'"):
        analysis.summed_update(single)
    with pytest.raises(TypeError, match="ImplicitUpdate"):
        analysis.update_cosines(torch.ones(2, 3, 4))
    stacked = icl.implicit_update(block, prompts, position="all")
    zero = icl.ImplicitUpdate(
        u=torch.zeros_like(stacked.u), v=stacked.v, delta_b=stacked.delta_b, position=None, n_tokens=4
    )
    with pytest.raises(ValueError, match="is zero"):
        analysis.update_cosines(zero)
