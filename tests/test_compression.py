"""icl_lib.experiments.compression: transported patches and least-squares static patches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TOLERANCE, relative_error

import icl_lib as icl
from icl_lib.experiments.compression import (
    BinnedMean,
    StaticPatch,
    apply_static_patch,
    apply_weight_patch,
    binned_mean,
    fit_static_patch,
    prompts_with_queries,
    transport_update,
)

DTYPES = [torch.float64, torch.float32]
CONTEXTUAL = ["softmax", "linear", "recurrent"]


def make(seed: int, dtype: torch.dtype, contextual: str = "softmax", dim: int = 3, hidden: int = 16, **kwargs):
    torch.manual_seed(seed)
    block = icl.Block(dim, hidden, n_heads=1, contextual=contextual, **kwargs).to(dtype)
    context = torch.randn(4, 7, dim, dtype=dtype)
    queries = torch.randn(4, 9, dim, dtype=dtype)
    return block, context, queries


def prompted(block, context, queries):
    b, k, _ = queries.shape
    return block(prompts_with_queries(context, queries))[:, -1].view(b, k, -1)


def test_prompts_with_queries_layout():
    context = torch.arange(2 * 3 * 2, dtype=torch.float64).view(2, 3, 2)
    queries = -torch.arange(1, 2 * 4 * 2 + 1, dtype=torch.float64).view(2, 4, 2)
    prompts = prompts_with_queries(context, queries)
    assert prompts.shape == (8, 4, 2)
    for b in range(2):
        for k in range(4):
            assert torch.equal(prompts[b * 4 + k, :3], context[b])
            assert torch.equal(prompts[b * 4 + k, 3], queries[b, k])


@pytest.mark.parametrize("mode", ["weight", "bias"])
@pytest.mark.parametrize("contextual", CONTEXTUAL)
@pytest.mark.parametrize("dtype", DTYPES)
def test_transport_is_exact_at_its_own_query(dtype, contextual, mode):
    block, context, queries = make(1, dtype, contextual)
    tokens = torch.cat([context, queries[:, :1]], dim=1)
    update = icl.implicit_update(block, tokens)
    out = transport_update(block, update, queries, mode=mode)
    assert out.shape == (4, 9, 3)
    assert relative_error(out[:, 0], block(tokens)[:, -1]) <= TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_transport_weight_mode_is_dense_patch_at_other_queries(dtype):
    block, context, queries = make(2, dtype, activation="gelu")
    update = icl.implicit_update(block, torch.cat([context, queries[:, :1]], dim=1))
    out = transport_update(block, update, queries)
    a = block.attn(queries.reshape(-1, 1, 3))[:, 0].view(4, 9, 3)  # A(x′) for each x′ alone
    patched_weight = block.mlp.up.weight + update.delta_W  # (B, H, D)
    pre = torch.einsum("bhd,bkd->bkh", patched_weight, a) + block.mlp.up.bias
    assert relative_error(out, block.mlp.tail(pre)) <= TOLERANCE[dtype]
    # bias mode: the same shift W δ at every query, whatever its overlap with A(x)
    out_bias = transport_update(block, update, queries, mode="bias")
    pre_bias = a @ block.mlp.up.weight.T + block.mlp.up.bias + update.u[:, None]
    assert relative_error(out_bias, block.mlp.tail(pre_bias)) <= TOLERANCE[dtype]
    # away from the anchor the two transports differ (they agree only where vᵀA(x′) = ‖v‖²)
    assert (out[:, 1:] - out_bias[:, 1:]).abs().max() > 1e-3


def test_transport_carries_output_bias_shift_of_residual_block():
    block, context, queries = make(3, torch.float64, residual=True, layer_norm=True)
    tokens = torch.cat([context, queries[:, :1]], dim=1)
    update = icl.implicit_update(block, tokens)
    assert update.delta_b is not None
    for mode in ("weight", "bias"):
        out = transport_update(block, update, queries, mode=mode)
        assert relative_error(out[:, 0], block(tokens)[:, -1]) <= 1e-12


@pytest.mark.parametrize("contextual", CONTEXTUAL)
@pytest.mark.parametrize("dtype", DTYPES)
def test_one_calibration_query_gives_the_theorem_patch(dtype, contextual):
    block, context, queries = make(4, dtype, contextual)
    patch = fit_static_patch(block, context, queries[:, :1])
    update = icl.implicit_update(block, torch.cat([context, queries[:, :1]], dim=1))
    assert relative_error(patch.delta_W, update.delta_W) <= 10 * TOLERANCE[dtype]
    assert patch.delta_b is None and patch.n_queries == 1
    assert torch.equal(patch.rank(), torch.ones(4, dtype=torch.int64))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rank_and_interpolation_up_to_the_input_width(dtype, bias):
    block, context, queries = make(5, dtype, dim=4, hidden=12)
    width = 4 + int(bias)  # columns of the design matrix
    for k in range(1, 8):
        patch = fit_static_patch(block, context, queries[:, :k], bias=bias)
        assert patch.delta_W.shape == (4, 12, 4)
        assert torch.equal(patch.rank(), torch.full((4,), min(k, 4), dtype=torch.int64))
        if k <= width:  # as many unknown columns as equations or more: exact at every calibration query
            want = prompted(block, context, queries[:, :k])
            assert relative_error(apply_static_patch(block, patch, queries[:, :k]), want) <= 10 * TOLERANCE[dtype]
    # more calibration queries than columns: a genuine least-squares compromise
    assert (patch.residual > 0).all()


@pytest.mark.parametrize("bias", [False, True])
def test_least_squares_optimality_and_minimum_norm(bias):
    block, context, queries = make(6, torch.float64)
    weight = block.mlp.up.weight
    for k in (2, 9):
        patch = fit_static_patch(block, context, queries[:, :k], bias=bias)
        a = block.attn(queries[:, :k].reshape(-1, 1, 3))[:, 0].view(4, k, 3)
        target = (prompted_inputs(block, context, queries[:, :k]) - a) @ weight.T
        design = torch.cat([a, torch.ones(4, k, 1, dtype=a.dtype)], -1) if bias else a
        solution = patch.delta_W.transpose(1, 2)
        if bias:
            solution = torch.cat([solution, patch.delta_b[:, None]], dim=1)
        mismatch = design @ solution - target
        # normal equations: the objective's gradient vanishes
        assert (design.transpose(1, 2) @ mismatch).abs().max() <= 1e-10
        assert torch.allclose(patch.residual, mismatch.pow(2).sum(-1).mean(-1))
        # minimum norm: each row of the solution lies in the row space of the design
        projector = torch.linalg.pinv(design) @ design
        assert (solution.transpose(1, 2) @ projector - solution.transpose(1, 2)).abs().max() <= 1e-10


def prompted_inputs(block, context, queries):
    b, k, d = queries.shape
    return block.attn(prompts_with_queries(context, queries))[:, -1].view(b, k, d)


def test_apply_static_patch_with_zero_patch_is_the_plain_block():
    block, _, queries = make(7, torch.float64)
    zero = StaticPatch(torch.zeros(4, 16, 3, dtype=torch.float64), None, 1, torch.zeros(4, dtype=torch.float64))
    out = apply_static_patch(block, zero, queries)
    assert torch.equal(out, block(queries.reshape(-1, 1, 3))[:, 0].view(4, 9, 3))


def test_bad_inputs():
    block, context, queries = make(8, torch.float64)
    update = icl.implicit_update(block, torch.cat([context, queries[:, :1]], dim=1))
    with pytest.raises(ValueError, match="mode"):
        transport_update(block, update, queries, mode="steer")
    with pytest.raises(ValueError, match="batch size"):
        transport_update(block, update, queries[:2])
    with pytest.raises(ValueError, match="token width"):
        transport_update(block, update, queries[..., :2])
    with pytest.raises(TypeError, match="dtype"):
        transport_update(block, update, queries.float())
    with pytest.raises(TypeError, match="ImplicitUpdate"):
        transport_update(block, "patch", queries)
    stacked = icl.implicit_update(block, torch.cat([context, queries[:, :1]], dim=1), position="all")
    with pytest.raises(ValueError, match="several updates"):
        transport_update(block, stacked, queries)
    with pytest.raises(ValueError, match="batch size"):
        fit_static_patch(block, context[:3], queries)
    with pytest.raises(ValueError, match="empty"):
        fit_static_patch(block, context, queries[:0])
    with pytest.raises(ValueError, match="need at least 1"):
        fit_static_patch(block, context[:, :0], queries)
    with pytest.raises(TypeError, match="bias"):
        fit_static_patch(block, context, queries, bias=1)
    residual_block, context_r, queries_r = make(8, torch.float64, residual=True)
    with pytest.raises(ValueError, match="plain blocks"):
        fit_static_patch(residual_block, context_r, queries_r)
    patch = fit_static_patch(block, context, queries)
    with pytest.raises(ValueError, match="delta_W"):
        apply_static_patch(block, patch, queries[:2])
    with pytest.raises(TypeError, match="StaticPatch"):
        apply_static_patch(block, update, queries)
    with pytest.raises(ValueError, match="B or D"):
        prompts_with_queries(context, queries[:3])


def test_zero_reference_is_refused():
    block, context, queries = make(9, torch.float64)
    with torch.no_grad():  # A(x) = W_o (W_v x + b_v) + b_o vanishes for every x
        block.attn.out.weight.zero_()
        block.attn.out.bias.zero_()
    with pytest.raises(ValueError, match="exactly zero"):
        fit_static_patch(block, context, queries)


def test_binned_mean():
    x = np.array([0.1, 0.2, 0.6, 0.7, 0.9, 1.5, -0.1])
    y = np.array([1.0, 3.0, 2.0, 4.0, 6.0, 100.0, 100.0])
    result = binned_mean(x, y, [0.0, 0.5, 1.0])
    assert isinstance(result, BinnedMean)
    np.testing.assert_allclose(result.centres, [0.25, 0.75])
    np.testing.assert_allclose(result.mean, [2.0, 4.0])
    np.testing.assert_allclose(result.sem, [np.std([1, 3], ddof=1) / np.sqrt(2), 2.0 / np.sqrt(3)])
    np.testing.assert_array_equal(result.count, [2, 3])
    empty = binned_mean(torch.tensor([0.1]), torch.tensor([1.0]), [0.0, 0.5, 1.0])
    assert empty.count.tolist() == [1, 0] and np.isnan(empty.mean[1]) and np.isnan(empty.sem[0])
    with pytest.raises(ValueError, match="increasing"):
        binned_mean(x, y, [1.0, 0.0])
    with pytest.raises(ValueError, match="same number"):
        binned_mean(x, y[:3], [0.0, 1.0])


def test_apply_weight_patch_equals_an_edited_copy_of_the_block():
    import copy

    block, _, queries = make(10, torch.float64)
    delta_W = 0.1 * torch.randn(4, 16, 3, dtype=torch.float64)
    delta_b = 0.1 * torch.randn(4, 16, dtype=torch.float64)
    out = apply_weight_patch(block, delta_W, queries, delta_b)
    for task in range(4):
        edited = copy.deepcopy(block)
        with torch.no_grad():
            edited.mlp.up.weight += delta_W[task]
            edited.mlp.up.bias += delta_b[task]
        want = edited(queries[task][:, None])[:, 0]
        assert relative_error(out[task], want) <= 1e-12
    with pytest.raises(ValueError, match="delta_b has shape"):
        apply_weight_patch(block, delta_W, queries, delta_b[:, :3])
    with pytest.raises(TypeError, match="delta_W is"):
        apply_weight_patch(block, delta_W.float(), queries)
    with pytest.raises(TypeError, match="delta_W must be"):
        apply_weight_patch(block, delta_W.numpy(), queries)
