"""Training: determinism, bookkeeping, learning, the two validation losses, bad configurations."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import icl_lib as icl

SMALL = dict(steps=30, batch=8, n_val=20, eval_every=10, n_context=6, hidden=8)


def test_training_is_deterministic_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    block_a, hist_a = icl.train_block(icl.TrainingConfig(**SMALL))
    assert torch.equal(torch.get_rng_state(), state)
    block_b, hist_b = icl.train_block(icl.TrainingConfig(**SMALL))
    for (name, p), q in zip(block_a.state_dict().items(), block_b.state_dict().values()):
        assert torch.equal(p, q), name
    assert np.array_equal(hist_a.train_loss, hist_b.train_loss)
    assert np.array_equal(hist_a.val_loss_implicit, hist_b.val_loss_implicit)
    block_c, _ = icl.train_block(icl.TrainingConfig(**{**SMALL, "seed": 1}))
    assert not torch.equal(block_a.mlp.up.weight, block_c.mlp.up.weight)


def test_history_bookkeeping():
    block, hist = icl.train_block(icl.TrainingConfig(**SMALL))
    assert hist.train_loss.shape == (30,)
    assert hist.eval_steps.tolist() == [0, 10, 20, 30]
    assert hist.val_loss.shape == hist.val_loss_implicit.shape == hist.val_max_gap.shape == (4,)
    assert np.isfinite(hist.train_loss).all()
    assert not block.training
    assert block.mlp.up.weight.dtype == torch.float32


def test_validation_without_context_matches_with_context():
    _, hist = icl.train_block(icl.TrainingConfig(**SMALL))
    assert np.allclose(hist.val_loss, hist.val_loss_implicit, rtol=1e-5, atol=0)
    assert hist.val_max_gap.max() < 1e-5


def test_a_short_training_run_learns_in_context():
    config = icl.TrainingConfig(steps=400, batch=32, n_context=10, hidden=32, eval_every=400, n_val=500)
    block, hist = icl.train_block(config)
    assert hist.val_loss[-1] < 0.7 * hist.val_loss[0]
    assert hist.val_loss[-1] < 0.8 * icl.zero_predictor_loss(2)
    # the learned block uses its context: dropping it makes the prediction worse
    tasks = icl.sample_regression(500, 10, 2, generator=torch.Generator().manual_seed(99))
    with torch.no_grad():
        with_context = icl.regression_loss(icl.predict(block, tasks.tokens), tasks.targets)
        alone = icl.regression_loss(icl.predict(block, tasks.truncated(0).tokens), tasks.targets)
    assert with_context < 0.8 * alone


def test_float64_training_starts_from_the_same_block_and_tasks():
    config32 = icl.TrainingConfig(**SMALL)
    config64 = icl.TrainingConfig(**SMALL, dtype=torch.float64)
    start32, start64 = icl.build_block(config32), icl.build_block(config64)
    for (name, p32), p64 in zip(start32.state_dict().items(), start64.state_dict().values()):
        assert p64.dtype == torch.float64 and torch.equal(p32.double(), p64), name
    block32, hist32 = icl.train_block(config32)
    block64, hist64 = icl.train_block(config64)
    assert block64.mlp.up.weight.dtype == torch.float64 and not block64.training
    # the same tasks and initial weights: the two runs agree to float32 round-off at step 0 ...
    assert abs(hist64.train_loss[0] - hist32.train_loss[0]) < 1e-5 * hist64.train_loss[0]
    # ... and float64's implicit validation gap is at its own round-off
    assert hist64.val_max_gap.max() < 1e-12
    np.testing.assert_allclose(hist64.val_loss, hist32.val_loss, rtol=1e-2)


def test_predictions_agree_in_float64():
    block, _ = icl.train_block(icl.TrainingConfig(**SMALL))
    block64 = copy.deepcopy(block).double()
    tasks = icl.sample_regression(16, 6, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        gap = (icl.predict(block64, tasks.tokens) - icl.predict_implicit(block64, tasks.tokens)).abs().max()
    assert gap.item() < 1e-12


def test_build_block_matches_the_config():
    config = icl.TrainingConfig(dim=3, n_heads=2, hidden=5, residual=True, layer_norm=True)
    block = icl.build_block(config)
    assert isinstance(block, icl.Block) and block.dim == 4 and block.hidden == 5 and block.layer_norm
    assert torch.equal(icl.build_block(config).mlp.up.weight, block.mlp.up.weight)


def test_constant_schedule_runs():
    _, hist = icl.train_block(icl.TrainingConfig(**{**SMALL, "schedule": "constant"}))
    assert np.isfinite(hist.val_loss).all()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(n_heads=2), ValueError, "n_heads"),
        (dict(lr=0.0), ValueError, "lr"),
        (dict(lr=float("nan")), ValueError, "lr"),
        (dict(schedule="linear"), ValueError, "schedule"),
        (dict(steps=0), ValueError, "steps"),
        (dict(batch=1.5), TypeError, "batch"),
        (dict(activation="swish"), ValueError, "activation"),
        (dict(layer_norm=True), ValueError, "layer_norm"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(dtype=torch.float16), TypeError, "dtype"),
        (dict(dtype="float64"), TypeError, "dtype"),
    ],
)
def test_bad_configs(kwargs, error, match):
    with pytest.raises(error, match=match):
        icl.TrainingConfig(**kwargs)


def test_bad_arguments():
    with pytest.raises(TypeError, match="TrainingConfig"):
        icl.train_block({"steps": 3})
    with pytest.raises(TypeError, match="TrainingConfig"):
        icl.build_block(None)
    with pytest.raises(ValueError, match="log_every"):
        icl.train_block(icl.TrainingConfig(**SMALL), log_every=-1)


def test_training_does_not_depend_on_the_thread_count():
    """The trained weights are bit-identical whatever torch's thread count is outside."""
    config = icl.TrainingConfig(steps=30, batch=16, n_val=50, eval_every=10, hidden=16)
    weights = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        block, _ = icl.train_block(config)
        assert torch.get_num_threads() == threads  # restored afterwards
        weights.append(torch.cat([p.detach().flatten() for p in block.parameters()]))
    torch.set_num_threads(1)
    assert torch.equal(weights[0], weights[1])
