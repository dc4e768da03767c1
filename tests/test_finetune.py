"""Explicit fine-tuning of the first MLP weight on the context examples."""

from __future__ import annotations

import copy

import pytest
import torch

import icl_lib as icl


def setup(dtype=torch.float64, residual=False, seed=0):
    torch.manual_seed(seed)
    block = icl.Block(3, 6, n_heads=3, residual=residual).to(dtype)
    tasks = icl.sample_regression(4, 5, 2, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return block, tasks


def reference_finetune(block, tasks, b, i, steps, lr):
    """Plain loop: a copy of the block, only W trainable, SGD on the first i examples of task b."""
    model = copy.deepcopy(block)
    for p in model.parameters():
        p.requires_grad_(False)
    model.mlp.up.weight.requires_grad_(True)
    optimiser = torch.optim.SGD([model.mlp.up.weight], lr=lr)
    x = tasks.x_context[b, :i]
    inputs = torch.cat([x, torch.zeros(i, 1, dtype=x.dtype)], dim=-1)[:, None]  # (i, 1, 3): each alone
    for _ in range(steps):
        pred = model(inputs)[:, -1, -1]
        loss = 0.5 * ((pred - tasks.y_context[b, :i]) ** 2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    query = torch.cat([tasks.x_query[b], torch.zeros(1, dtype=x.dtype)])[None, None]
    return model.mlp.up.weight.detach() - block.mlp.up.weight.detach(), model(query)[0, -1, -1].detach()


@pytest.mark.parametrize("residual", [False, True])
def test_matches_a_plain_training_loop(residual):
    block, tasks = setup(residual=residual)
    result = icl.finetune_first_weight(block, tasks, [1, 3, 5], steps=7, lr=0.3)
    assert result.delta_W.shape == (4, 3, 6, 3)
    for b in (0, 3):
        for k, i in enumerate([1, 3, 5]):
            delta, pred = reference_finetune(block, tasks, b, i, 7, 0.3)
            assert torch.allclose(result.delta_W[b, k], delta, atol=1e-12)
            assert torch.allclose(result.query_prediction[b, k], pred, atol=1e-12)


def test_zero_steps_and_the_initial_losses():
    block, tasks = setup()
    result = icl.finetune_first_weight(block, tasks, [2, 5], steps=0, lr=0.1)
    assert torch.equal(result.delta_W, torch.zeros_like(result.delta_W))
    assert result.context_loss.shape == result.query_loss.shape == (1, 4, 2)
    alone = torch.cat([tasks.x_context, torch.zeros(4, 5, 1, dtype=torch.float64)], -1).reshape(20, 1, 3)
    pred = block(alone)[:, -1, -1].reshape(4, 5)
    want = 0.5 * ((pred - tasks.y_context) ** 2)[:, :2].mean(-1)
    assert torch.allclose(result.context_loss[0, :, 0], want, atol=1e-14)
    query_pred = icl.predict(block, tasks.truncated(0).tokens)
    assert torch.allclose(result.query_loss[0, :, 1], 0.5 * (query_pred - tasks.targets) ** 2, atol=1e-14)


def test_gradient_descent_reduces_the_context_loss_and_leaves_the_block_alone():
    block, tasks = setup(dtype=torch.float32, seed=2)
    before = copy.deepcopy(block.state_dict())
    result = icl.finetune_first_weight(block, tasks, [1, 2, 3, 4, 5], steps=50, lr=0.05)
    assert (result.context_loss[-1] < result.context_loss[0]).all()
    assert (result.context_loss[1:] <= result.context_loss[:-1] + 1e-6).all()  # small steps: monotone
    for name, p in block.state_dict().items():
        assert torch.equal(p, before[name]), name
    assert all(p.grad is None for p in block.parameters())


def test_bad_inputs():
    block, tasks = setup()
    with pytest.raises(ValueError, match="number of examples"):
        icl.finetune_first_weight(block, tasks, [0], steps=1, lr=0.1)
    with pytest.raises(ValueError, match="number of examples"):
        icl.finetune_first_weight(block, tasks, [6], steps=1, lr=0.1)
    with pytest.raises(TypeError, match="n_examples"):
        icl.finetune_first_weight(block, tasks, [], steps=1, lr=0.1)
    with pytest.raises(TypeError, match="ints"):
        icl.finetune_first_weight(block, tasks, [2.0], steps=1, lr=0.1)
    with pytest.raises(ValueError, match="steps"):
        icl.finetune_first_weight(block, tasks, [2], steps=-1, lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        icl.finetune_first_weight(block, tasks, [2], steps=1, lr=0.0)
    with pytest.raises(TypeError, match="RegressionBatch"):
        icl.finetune_first_weight(block, tasks.tokens, [2], steps=1, lr=0.1)
    with pytest.raises(TypeError, match="float32"):
        icl.finetune_first_weight(block.float(), tasks, [2], steps=1, lr=0.1)
    wide = icl.sample_regression(2, 5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(ValueError, match="token width"):
        icl.finetune_first_weight(block.double(), wide, [2], steps=1, lr=0.1)


def reference_online(block, tasks, b, lr):
    """Plain loop: a copy of the block, only W trainable, one SGD step per context example of task b."""
    model = copy.deepcopy(block)
    for p in model.parameters():
        p.requires_grad_(False)
    model.mlp.up.weight.requires_grad_(True)
    optimiser = torch.optim.SGD([model.mlp.up.weight], lr=lr)
    dtype = tasks.tokens.dtype
    query = torch.cat([tasks.x_query[b], torch.zeros(1, dtype=dtype)])[None, None]
    deltas, preds = [torch.zeros_like(block.mlp.up.weight)], [model(query)[0, -1, -1].detach()]
    for j in range(tasks.n_context):
        token = torch.cat([tasks.x_context[b, j], torch.zeros(1, dtype=dtype)])[None, None]
        loss = 0.5 * (model(token)[0, -1, -1] - tasks.y_context[b, j]) ** 2
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        deltas.append(model.mlp.up.weight.detach() - block.mlp.up.weight.detach())
        preds.append(model(query)[0, -1, -1].detach())
    return torch.stack(deltas), torch.stack(preds)


@pytest.mark.parametrize("residual", [False, True])
def test_online_sgd_matches_a_plain_training_loop(residual):
    block, tasks = setup(residual=residual)
    rates = torch.tensor([0.3, 0.01, 1.0, 0.05], dtype=torch.float64)
    result = icl.finetune_online(block, tasks, lr=rates)
    assert result.delta_W.shape == (4, 6, 6, 3)
    assert result.query_prediction.shape == result.query_loss.shape == (4, 6)
    assert result.example_loss.shape == (4, 5)
    for b in range(4):
        deltas, preds = reference_online(block, tasks, b, rates[b].item())
        assert torch.allclose(result.delta_W[b], deltas, atol=1e-12)
        assert torch.allclose(result.query_prediction[b], preds, atol=1e-12)
    assert torch.allclose(result.query_loss, 0.5 * (result.query_prediction - tasks.targets[:, None]) ** 2)


def test_online_sgd_starts_at_the_block_and_one_rate_is_every_rate():
    block, tasks = setup()
    same = icl.finetune_online(block, tasks, lr=0.1)
    per_task = icl.finetune_online(block, tasks, lr=torch.full((4,), 0.1, dtype=torch.float64))
    assert torch.equal(same.delta_W, per_task.delta_W)
    assert torch.equal(same.delta_W[:, 0], torch.zeros_like(same.delta_W[:, 0]))
    assert torch.allclose(same.query_prediction[:, 0], icl.predict(block, tasks.truncated(0).tokens), atol=1e-14)
    # the loss of example i before its step is the block's loss on (x_i, 0) for i = 1
    alone = torch.cat([tasks.x_context[:, :1], torch.zeros(4, 1, 1, dtype=torch.float64)], -1)
    first = 0.5 * (block(alone)[:, -1, -1] - tasks.y_context[:, 0]) ** 2
    assert torch.allclose(same.example_loss[:, 0], first, atol=1e-14)


def test_online_sgd_bad_inputs():
    block, tasks = setup()
    for bad in (0.0, -1.0, float("inf"), True):
        with pytest.raises(ValueError, match="lr"):
            icl.finetune_online(block, tasks, lr=bad)
    with pytest.raises(ValueError, match="shape"):
        icl.finetune_online(block, tasks, lr=torch.ones(3, dtype=torch.float64))
    with pytest.raises(TypeError, match="float64"):
        icl.finetune_online(block, tasks, lr=torch.ones(4))
    with pytest.raises(ValueError, match="positive"):
        icl.finetune_online(block, tasks, lr=torch.tensor([0.1, 0.0, 0.1, 0.1], dtype=torch.float64))
    with pytest.raises(TypeError, match="RegressionBatch"):
        icl.finetune_online(block, tasks.tokens, lr=0.1)


def reference_distill(block, query, target, steps, lr):
    """Plain loop: only W trainable, gradient descent on ½‖block(query alone) − target‖²."""
    model = copy.deepcopy(block)
    for p in model.parameters():
        p.requires_grad_(False)
    model.mlp.up.weight.requires_grad_(True)
    optimiser = torch.optim.SGD([model.mlp.up.weight], lr=lr)
    for _ in range(steps):
        loss = 0.5 * ((model(query)[0, -1] - target) ** 2).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.mlp.up.weight.detach() - block.mlp.up.weight.detach()


@pytest.mark.parametrize("residual", [False, True])
def test_distillation_matches_a_plain_loop_and_is_rank_one_along_the_query(residual):
    block, tasks = setup(residual=residual)
    query = tasks.tokens[:, -1:]
    with torch.no_grad():
        trajectory = icl.implicit_trajectory(block, tasks.tokens)
        targets = icl.forward_with_update(block, trajectory.update, query)[:, [1, 3, 5]]  # (4, 3, 3)
    result = icl.distill_first_weight(block, query, targets, steps=6, lr=0.2)
    assert result.delta_W.shape == (4, 3, 6, 3) and result.loss.shape == (7, 4, 3)
    for b in (0, 2):
        for k in range(3):
            want = reference_distill(block, query[b : b + 1], targets[b, k], 6, 0.2)
            assert torch.allclose(result.delta_W[b, k], want, atol=1e-12)
    # every gradient has the right factor a, the MLP input at the query alone
    a = trajectory.update.v  # (4, D)
    projector = torch.eye(3, dtype=torch.float64) - torch.einsum("bi,bj->bij", a, a) / (a * a).sum(-1)[:, None, None]
    off_a = torch.einsum("bkhd,bde->bkhe", result.delta_W, projector)
    assert off_a.abs().max() < 1e-12 * result.delta_W.abs().max()
    _, share = icl.alignment_factors(result.delta_W[:, 2], trajectory.update.u[:, 5], a)
    assert torch.allclose(share, torch.ones_like(share), atol=1e-12)
    # small steps lower the loss
    small = icl.distill_first_weight(block, query, targets, steps=20, lr=0.01)
    assert (small.loss[-1] < small.loss[0]).all()
    # the target at i = 0 is the block on the query alone: nothing to learn
    zero = icl.forward_with_update(block, trajectory.update, query)[:, :1].detach()
    still = icl.distill_first_weight(block, query, zero, steps=3, lr=0.5)
    assert still.delta_W.abs().max() < 1e-12


def test_distillation_bad_inputs():
    block, tasks = setup()
    query = tasks.tokens[:, -1:]
    targets = torch.zeros(4, 2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="alone"):
        icl.distill_first_weight(block, tasks.tokens, targets, steps=1, lr=0.1)
    with pytest.raises(ValueError, match="targets"):
        icl.distill_first_weight(block, query, targets[:3], steps=1, lr=0.1)
    with pytest.raises(ValueError, match="outputs"):
        icl.distill_first_weight(block, query, torch.zeros(4, 2, 5, dtype=torch.float64), steps=1, lr=0.1)
    with pytest.raises(TypeError, match="float32"):
        icl.distill_first_weight(block, query, targets.float(), steps=1, lr=0.1)
    with pytest.raises(ValueError, match="finite"):
        icl.distill_first_weight(block, query, targets + float("nan"), steps=1, lr=0.1)
    with pytest.raises(ValueError, match="steps"):
        icl.distill_first_weight(block, query, targets, steps=-1, lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        icl.distill_first_weight(block, query, targets, steps=1, lr=-0.1)


def test_every_protocol_runs_under_no_grad():
    block, tasks = setup()
    query = tasks.tokens[:, -1:]
    targets = torch.zeros(4, 1, 3, dtype=torch.float64)
    want = (
        icl.finetune_first_weight(block, tasks, [3], steps=2, lr=0.1).delta_W,
        icl.finetune_online(block, tasks, lr=0.1).delta_W,
        icl.distill_first_weight(block, query, targets, steps=2, lr=0.1).delta_W,
    )
    with torch.no_grad():
        got = (
            icl.finetune_first_weight(block, tasks, [3], steps=2, lr=0.1).delta_W,
            icl.finetune_online(block, tasks, lr=0.1).delta_W,
            icl.distill_first_weight(block, query, targets, steps=2, lr=0.1).delta_W,
        )
    for g, w in zip(got, want):
        assert torch.equal(g, w) and g.abs().max() > 0
