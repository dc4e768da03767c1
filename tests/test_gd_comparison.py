"""The linear self-attention that takes one gradient step, and its implicit update (chapter 9)."""

import math

import pytest
import torch

import icl_lib as icl


def _tasks(batch=64, n=20, d=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return icl.sample_regression(batch, n, d, generator=gen, dtype=torch.float64)


def test_gd_step_is_a_gradient_step_on_the_least_squares_loss():
    tasks = _tasks()
    w0 = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    w = w0.clone().requires_grad_(True)
    pred = torch.einsum("bnd,bd->bn", tasks.x_context, w)
    # L(w) = 1/(2N) Σ (⟨w, x⟩ − y)², one loss per task, summed over tasks
    loss = 0.5 * ((pred - tasks.y_context) ** 2).mean(dim=1).sum()
    (grad,) = torch.autograd.grad(loss, w)
    expected = w0 - 0.3 * grad
    got = icl.gd_step(tasks.x_context, tasks.y_context, 0.3, w0)
    assert torch.allclose(got, expected, rtol=0, atol=1e-13)
    # from zero by default
    zero = icl.gd_step(tasks.x_context, tasks.y_context, 0.3)
    assert torch.allclose(zero, 0.3 * (tasks.y_context[..., None] * tasks.x_context).mean(1), atol=1e-14)


@pytest.mark.parametrize("d", [1, 2, 5])
def test_the_layer_outputs_the_prediction_after_one_step(d):
    tasks = _tasks(d=d)
    layer = icl.gd_linear_attention(d, 0.7, tasks.n_context)
    with torch.no_grad():
        out = layer(tasks.tokens)[:, -1]
        alone = layer(tasks.tokens[:, -1:])[:, -1]
    w1 = icl.gd_step(tasks.x_context, tasks.y_context, 0.7)
    assert torch.allclose(out[:, -1], (w1 * tasks.x_query).sum(-1), rtol=0, atol=1e-13)
    assert torch.equal(out[:, :-1], tasks.x_query)
    # the query alone: A(x) = (x_q, 0)
    assert torch.equal(alone[:, :-1], tasks.x_query) and torch.equal(alone[:, -1], torch.zeros(64, dtype=torch.float64))


def test_absent_tokens_leave_the_sums():
    torch.manual_seed(0)
    layer = icl.LinearSelfAttention(3, n_context=7).double()
    tokens = torch.randn(4, 8, 3, dtype=torch.float64)
    keep = torch.ones(4, 8, dtype=torch.bool)
    keep[:, 2] = keep[:, 5] = False
    masked = layer(tokens, keep)
    shorter = layer(tokens[:, keep[0]])
    assert torch.allclose(masked[:, keep[0]], shorter, rtol=0, atol=1e-14)
    # and a random layer is not a gradient step: the query's label coordinate mixes inputs
    assert not torch.allclose(layer(tokens)[:, -1, :-1], tokens[:, -1, :-1])


def test_the_implicit_update_is_the_gd_patch_projected_on_the_query():
    tasks = _tasks(batch=200)
    torch.manual_seed(3)
    block = icl.Block(3, 16, contextual=icl.gd_linear_attention(2, 1.0, tasks.n_context)).double()
    c = icl.compare_with_gd(block, tasks, 1.0)
    assert (c.delta_W - c.projected).abs().max() < 1e-13
    assert torch.allclose(c.cosine, c.query_cosine, atol=1e-12)
    assert torch.allclose(c.norm_ratio, c.query_cosine, atol=1e-12)
    # in d = 2 the two differ: the mean |cos| is near 2/π, far from 1
    assert abs(c.cosine.mean().item() - 2 / math.pi) < 0.06
    # the GD patch is exact at other queries; the implicit one is not
    fresh = torch.randn(200, 5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    implicit, gd = icl.patch_errors(block, c, tasks, fresh)
    assert implicit.shape == gd.shape == (200, 5)
    assert gd.max() < 1e-12 and implicit.median() > 1e-2
    # at the task's own query both are exact
    own, own_gd = icl.patch_errors(block, c, tasks, tasks.x_query[:, None])
    assert own.max() < 1e-12 and own_gd.max() < 1e-12
    with pytest.raises(ValueError):
        icl.patch_errors(block, c, tasks, fresh[:, :, :1])


def test_in_one_dimension_the_two_patches_coincide():
    tasks = _tasks(d=1)
    block = icl.Block(2, 8, contextual=icl.gd_linear_attention(1, 0.5, tasks.n_context)).double()
    c = icl.compare_with_gd(block, tasks, 0.5)
    assert (c.delta_W - c.gd_patch).abs().max() < 1e-13


def test_a_layer_that_takes_another_step_breaks_the_projection():
    tasks = _tasks()
    block = icl.Block(3, 8, contextual=icl.gd_linear_attention(2, 1.0, tasks.n_context)).double()
    c = icl.compare_with_gd(block, tasks, 0.5)  # the layer's rate is 1.0, not 0.5
    assert (c.delta_W - c.projected).abs().max() > 1e-3


def test_expected_loss_of_one_step_matches_sampling():
    tasks = _tasks(batch=200_000, n=10, d=3, seed=4)
    eta = icl.optimal_one_step_lr(3, 10)
    assert eta == pytest.approx(10 / 14)
    w1 = icl.gd_step(tasks.x_context, tasks.y_context, eta)
    sampled = icl.regression_loss((w1 * tasks.x_query).sum(-1), tasks.targets).item()
    assert sampled == pytest.approx(icl.one_step_expected_loss(3, 10, eta), rel=0.03)
    # η* is the minimiser
    assert icl.one_step_expected_loss(3, 10, eta) < min(icl.one_step_expected_loss(3, 10, eta + s) for s in (-0.01, 0.01))


def test_bad_inputs_are_refused():
    tasks = _tasks()
    with pytest.raises(ValueError):
        icl.gd_linear_attention(0, 1.0, 5)
    with pytest.raises(ValueError):
        icl.gd_linear_attention(2, float("nan"), 5)
    with pytest.raises(ValueError):
        icl.LinearSelfAttention(3, 0)
    with pytest.raises(ValueError):
        icl.gd_linear_attention(2, 1.0, 5)(torch.zeros(2, 3, 4, dtype=torch.float64))
    with pytest.raises(ValueError):
        icl.gd_step(tasks.x_context, tasks.y_context[:, :-1], 1.0)
    with pytest.raises(ValueError):
        icl.gd_weight_patch(torch.zeros(4, 5), torch.zeros(2, 2))
    with pytest.raises(TypeError):
        icl.compare_with_gd(icl.Block(3, 4).double(), tasks.tokens, 1.0)
    with pytest.raises(ValueError):
        icl.compare_with_gd(icl.Block(3, 4, residual=True).double(), tasks, 1.0)
    with pytest.raises(ValueError):
        icl.one_step_expected_loss(0, 5, 1.0)
