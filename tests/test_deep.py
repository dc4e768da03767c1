"""Deep stacks: training an icl.Transformer with the book's loop, the shared configuration, PyTorch encoder stacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import icl_lib as icl

TINY_STACK = dict(
    dim=2, n_context=6, hidden=8, n_heads=2, residual=True, layer_norm=True, depth=2, width=4,
    steps=30, batch=16, eval_every=10, n_val=50,
)


def test_config_with_depth_builds_a_transformer_of_that_shape():
    config = icl.TrainingConfig(**TINY_STACK)
    model = icl.build_block(config)
    assert isinstance(model, icl.Transformer)
    assert len(model.blocks) == 2 and model.dim == 4 and model.in_dim == 3
    assert model.readout.out_features == 3
    assert all(block.layer_norm and block.residual and block.mlp.up.out_features == 8 for block in model.blocks)
    # Without depth the config still builds the single block it always built.
    assert isinstance(icl.build_block(icl.TrainingConfig(n_heads=3)), icl.Block)


def test_build_is_seeded_and_leaves_the_global_rng_alone():
    config = icl.TrainingConfig(**TINY_STACK)
    state = torch.random.get_rng_state()
    a, b = icl.build_block(config), icl.build_block(config)
    assert torch.equal(state, torch.random.get_rng_state())
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(depth=None), "go together"),
        (dict(width=None), "go together"),
        (dict(depth=0), "depth must be at least 1"),
        (dict(width=5), "must divide the stack's width"),
        (dict(depth=2.0), "depth must be an int"),
    ],
)
def test_config_refuses_inconsistent_stacks(changes, message):
    with pytest.raises((ValueError, TypeError), match=message):
        icl.TrainingConfig(**{**TINY_STACK, **changes})


def test_the_training_loop_trains_a_stack_and_validates_through_the_patched_stack():
    torch.set_num_threads(1)
    config = icl.TrainingConfig(**TINY_STACK)
    model, history = icl.train_block(config)
    again, _ = icl.train_block(config)
    assert isinstance(model, icl.Transformer) and not model.training
    for p, q in zip(model.parameters(), again.parameters()):
        assert torch.equal(p, q)  # deterministic
    assert history.train_loss.shape == (30,) and np.isfinite(history.train_loss).all()
    assert not np.array_equal(history.val_loss[0], history.val_loss[-1])  # the weights moved
    # Validation without the context patches every block: equal to the prompted loss up to round-off.
    np.testing.assert_allclose(history.val_loss_implicit, history.val_loss, rtol=1e-4)
    assert history.val_max_gap.max() < 1e-4


def test_predict_implicit_of_a_stack_is_the_patched_network():
    torch.manual_seed(0)
    model = icl.build_block(icl.TrainingConfig(**TINY_STACK)).double()
    tasks = icl.sample_regression(5, 6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        prompted = icl.predict(model, tasks.tokens)
        implicit = icl.predict_implicit(model, tasks.tokens)
        alone = icl.predict(model, tasks.tokens[:, -1:])
    assert (prompted - implicit).abs().max() < 1e-12
    assert (prompted - alone).abs().max() > 1e-3  # the patches carry the context


def test_deep_regression_config_is_a_stack_config():
    config = icl.deep_regression_config()
    assert isinstance(config, icl.TrainingConfig)
    assert (config.depth, config.width, config.hidden, config.n_heads) == (3, 16, 64, 2)
    assert config.residual and config.layer_norm and config.dim == 2
    assert icl.deep_regression_config(seed=4).seed == 4
    assert isinstance(icl.build_block(config), icl.Transformer)


@pytest.mark.parametrize("norm_first", [True, False])
def test_encoder_stack_layers_are_independent_and_in_eval_mode(norm_first: bool):
    stack = icl.encoder_stack(8, 3, 16, 2, norm_first=norm_first, seed=0)
    assert isinstance(stack, nn.TransformerEncoder) and not stack.training
    assert len(stack.layers) == 3
    assert all(layer.norm_first == norm_first and layer.self_attn.batch_first for layer in stack.layers)
    assert (stack.norm is not None) == norm_first
    w = [layer.linear1.weight for layer in stack.layers]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    again = icl.encoder_stack(8, 3, 16, 2, norm_first=norm_first, seed=0)
    for p, q in zip(stack.parameters(), again.parameters()):
        assert torch.equal(p, q)
    assert icl.encoder_stack(8, 3, 16, 2, norm_first=norm_first, seed=0, dtype=torch.float64).layers[0].linear1.weight.dtype == torch.float64


def test_encoder_stack_satisfies_the_stack_theorem():
    stack = icl.encoder_stack(8, 2, 16, 2, norm_first=False, seed=1, dtype=torch.float64)
    tokens = torch.randn(3, 5, 8, dtype=torch.float64)
    assert icl.network_gap(stack, tokens).max() < 1e-12


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(width=6, n_heads=4), ValueError),
        (dict(depth=0), ValueError),
        (dict(norm_first=1), TypeError),
        (dict(dtype=torch.float16), TypeError),
        (dict(seed=-1), ValueError),
    ],
)
def test_encoder_stack_refuses_bad_arguments(kwargs, error):
    arguments = dict(width=8, depth=2, hidden=16, n_heads=2, norm_first=True, seed=0)
    with pytest.raises(error):
        icl.encoder_stack(**{**arguments, **kwargs})
