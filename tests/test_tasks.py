"""The in-context linear regression task: shapes, determinism, consistency, bad inputs."""

from __future__ import annotations

import pytest
import torch

import icl_lib as icl


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_and_layout(dtype):
    batch = icl.sample_regression(5, 7, 3, generator=gen(), dtype=dtype)
    assert batch.tokens.shape == (5, 8, 4)
    assert batch.targets.shape == (5,) and batch.weights.shape == (5, 3)
    assert batch.x_context.shape == (5, 7, 3) and batch.y_context.shape == (5, 7) and batch.x_query.shape == (5, 3)
    assert batch.n_context == 7 and batch.dim == 3
    assert all(t.dtype == dtype for t in (batch.tokens, batch.targets, batch.weights))
    # context rows (x_j, y_j), query row (x_q, 0)
    assert torch.equal(batch.tokens[:, :7, :3], batch.x_context)
    assert torch.equal(batch.tokens[:, :7, 3], batch.y_context)
    assert torch.equal(batch.tokens[:, 7, :3], batch.x_query)
    assert torch.all(batch.tokens[:, 7, 3] == 0)


def test_labels_are_noiseless_linear():
    batch = icl.sample_regression(4, 6, 2, generator=gen(3), dtype=torch.float64)
    assert torch.allclose(batch.y_context, torch.einsum("bnd,bd->bn", batch.x_context, batch.weights), atol=1e-14)
    assert torch.allclose(batch.targets, (batch.x_query * batch.weights).sum(-1), atol=1e-14)


def test_deterministic_under_a_seed_and_different_across_seeds():
    a = icl.sample_regression(3, 4, 2, generator=gen(11))
    b = icl.sample_regression(3, 4, 2, generator=gen(11))
    c = icl.sample_regression(3, 4, 2, generator=gen(12))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.tokens, c.tokens)


def test_float32_and_float64_draw_the_same_tasks():
    a = icl.sample_regression(3, 4, 2, generator=gen(1), dtype=torch.float32)
    b = icl.sample_regression(3, 4, 2, generator=gen(1), dtype=torch.float64)
    assert torch.equal(a.tokens, b.tokens.float())


def test_statistics_match_the_task_definition():
    batch = icl.sample_regression(20000, 1, 2, generator=gen(5), dtype=torch.float64)
    # E[y²] = E‖w‖² = d, so the zero predictor's loss is d/2 = 1
    zero = icl.regression_loss(torch.zeros_like(batch.targets), batch.targets).item()
    assert abs(zero - icl.zero_predictor_loss(2)) < 0.05
    assert abs(batch.weights.var().item() - 1) < 0.05


def test_truncated_keeps_tasks_and_query():
    batch = icl.sample_regression(3, 5, 2, generator=gen(2))
    short = batch.truncated(2)
    assert short.tokens.shape == (3, 3, 3)
    assert torch.equal(short.tokens[:, :2], batch.tokens[:, :2])
    assert torch.equal(short.tokens[:, -1], batch.tokens[:, -1])
    assert torch.equal(short.targets, batch.targets)
    assert batch.truncated(0).tokens.shape == (3, 1, 3)
    with pytest.raises(ValueError, match="n must be"):
        batch.truncated(6)


def test_regression_tokens_empty_context_is_the_query_alone():
    x_q = torch.randn(2, 3)
    tokens = icl.regression_tokens(torch.zeros(2, 0, 3), torch.zeros(2, 0), x_q)
    assert tokens.shape == (2, 1, 4) and torch.equal(tokens[:, 0, :3], x_q)


def test_prediction_and_loss():
    out = torch.arange(12.0).view(2, 2, 3)
    assert torch.equal(icl.read_prediction(out[:, -1]), torch.tensor([5.0, 11.0]))
    assert torch.equal(icl.read_prediction(out), torch.tensor([[2.0, 5.0], [8.0, 11.0]]))
    loss = icl.regression_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0]))
    assert loss.item() == pytest.approx(0.5 * (1 + 4) / 2)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(batch=0), ValueError, "batch"),
        (dict(n_context=-1), ValueError, "n_context"),
        (dict(dim=0), ValueError, "dim"),
        (dict(batch=2.0), TypeError, "batch"),
        (dict(dtype=torch.int64), TypeError, "dtype"),
        (dict(generator=None), TypeError, "generator"),
    ],
)
def test_sample_bad_inputs(kwargs, error, match):
    args = dict(batch=2, n_context=3, dim=2, generator=gen())
    args.update(kwargs)
    with pytest.raises(error, match=match):
        icl.sample_regression(**args)


def test_regression_tokens_bad_inputs():
    x, y, q = torch.randn(2, 3, 2), torch.randn(2, 3), torch.randn(2, 2)
    with pytest.raises(ValueError, match="y_context"):
        icl.regression_tokens(x, torch.randn(2, 4), q)
    with pytest.raises(ValueError, match="x_query"):
        icl.regression_tokens(x, y, torch.randn(2, 3))
    with pytest.raises(TypeError, match="y_context"):
        icl.regression_tokens(x, y.double(), q)
    with pytest.raises(ValueError, match="non-finite"):
        icl.regression_tokens(x, torch.full((2, 3), float("nan")), q)
    with pytest.raises(ValueError, match="x_context"):
        icl.regression_tokens(torch.randn(3, 2), y, q)
    with pytest.raises(ValueError, match="differ in shape"):
        icl.regression_loss(torch.zeros(2), torch.zeros(3))
