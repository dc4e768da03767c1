"""over_seeds: one measurement on blocks trained from several seeds (chapters 4 and 5)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import icl_lib as icl

SMALL = icl.TrainingConfig(dim=2, n_context=4, hidden=8, n_heads=1, steps=12, batch=8,
                           eval_every=6, n_val=16)


def first_weight_norm(block, history):
    return {"norm": block.mlp.up.weight.norm().item(), "val": history.val_loss[-1]}


def test_one_value_per_seed_equal_to_training_that_seed_by_hand():
    spread = icl.over_seeds(SMALL, [0, 3, 1], first_weight_norm)
    assert set(spread) == {"norm", "val"}
    assert spread["norm"].seeds == (0, 3, 1)
    for seed, value in zip((0, 3, 1), spread["norm"].values):
        block, _ = icl.train_block(dataclasses.replace(SMALL, seed=seed))
        assert value == block.mlp.up.weight.norm().item()
    values = spread["norm"].values
    assert len(set(values.tolist())) == 3  # different seeds, different blocks
    assert spread["norm"].mean == pytest.approx(values.mean())
    assert (spread["norm"].low, spread["norm"].high) == (values.min(), values.max())


def test_a_trained_block_is_reused_and_validation_settings_do_not_change_the_weights():
    block, history = icl.train_block(dataclasses.replace(SMALL, seed=2))
    fewer_checks = dataclasses.replace(SMALL, eval_every=SMALL.steps, n_val=4)
    calls = []

    def measure(b, h):
        calls.append(b)
        return {"norm": b.mlp.up.weight.norm().item()}

    spread = icl.over_seeds(fewer_checks, [2, 5], measure, trained={2: (block, history)})
    assert calls[0] is block and calls[1] is not block
    retrained, _ = icl.train_block(dataclasses.replace(fewer_checks, seed=2))
    for p, q in zip(block.parameters(), retrained.parameters()):
        assert torch.equal(p, q)
    assert spread["norm"].values[0] == block.mlp.up.weight.norm().item()


def test_text_gives_mean_and_range():
    spread = icl.SeedSpread((0, 1, 2), np.array([0.5, 0.25, 1.0]))
    assert spread.text(".2f") == "0.58 (0.25 to 1.00)"
    assert spread.text(".1f") == "0.6 (0.2 to 1.0)"


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="at least one seed"):
        icl.over_seeds(SMALL, [], first_weight_norm)
    with pytest.raises(ValueError, match="repeat"):
        icl.over_seeds(SMALL, [1, 1], first_weight_norm)
    with pytest.raises(TypeError, match="TrainingConfig"):
        icl.over_seeds({"steps": 3}, [0], first_weight_norm)
    with pytest.raises(TypeError, match="measure"):
        icl.over_seeds(SMALL, [0], 3.0)
    with pytest.raises(ValueError, match="no statistic"):
        icl.over_seeds(SMALL, [0], lambda b, h: {})
    names = iter([{"a": 1.0}, {"b": 2.0}])
    with pytest.raises(ValueError, match="before"):
        icl.over_seeds(SMALL, [0, 1], lambda b, h: next(names))
    with pytest.raises(ValueError, match="one entry per seed"):
        icl.SeedSpread((0, 1), np.array([1.0]))
    with pytest.raises(ValueError, match="not finite"):
        icl.SeedSpread((0,), np.array([np.nan]))
