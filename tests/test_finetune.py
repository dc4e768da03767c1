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
