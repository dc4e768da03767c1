"""icl_lib.benchmarks.plan.memory_plan counts exactly what the library stores, on tiny models."""

import pytest
import torch

import icl_lib as icl
from icl_lib.benchmarks.plan import memory_plan
from tiny_lms import BUILDERS, build, prompt_ids


def _factor_bytes(updates) -> int:
    fields = ("u", "v", "delta_b", "delta")
    return sum(getattr(u, f).nbytes for u in updates for f in fields if getattr(u, f) is not None)


@pytest.mark.parametrize("family", ["llama", "gemma3", "mixtral", "gpt_neox", "phi3"])
def test_counts_match_what_the_library_returns(family):
    model = build(family, "small", 3, torch.float32)
    b, t = 2, 9
    ids = prompt_ids(b, t, 3)
    plan = memory_plan(model.config, t, batch=b, dtype=torch.float32, kept_tokens=1)
    assert plan.parameters == sum(p.numel() for p in model.parameters())
    assert plan.weights == 4 * plan.parameters
    assert plan.query == _factor_bytes(icl.network_update(model, ids))
    assert plan.every_position == _factor_bytes(icl.network_update(model, ids, position="all"))
    trajectory = icl.implicit_trajectory(model, ids, logits=False)
    assert plan.trajectory == sum(_factor_bytes(step) for step in trajectory.updates)
    kept = icl.network_update(model, ids, kept_tokens=3)
    assert memory_plan(model.config, t, batch=b, dtype=torch.float32, kept_tokens=3).query == _factor_bytes(kept)
    cache = model(ids, use_cache=True).past_key_values
    stored = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert plan.kv_cache >= stored  # sliding layers may keep fewer positions


def test_bad_arguments_are_refused():
    config = BUILDERS["llama"]("small").config
    with pytest.raises(ValueError, match="n_tokens must be a positive int"):
        memory_plan(config, 0)
    with pytest.raises(ValueError, match=r"kept_tokens must be an int in \[1, 4\]"):
        memory_plan(config, 5, kept_tokens=5)
