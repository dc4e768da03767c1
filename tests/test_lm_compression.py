"""Static patches, transported patches, the two patches' contributions and patched decoding on
small random language models (no download)."""

from __future__ import annotations

import pytest
import torch
from conftest import TOLERANCE, relative_error
from tiny_lms import build, prompt_ids

import icl_lib as icl


def _prompts_sharing_a_context(batch: int, context: int, kept: int, seed: int) -> torch.Tensor:
    """Prompts with one shared context and a different kept tail per row."""
    shared = prompt_ids(1, context, seed).expand(batch, context)
    return torch.cat([shared, prompt_ids(batch, kept, seed + 1)], dim=1)


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
def test_static_patch_with_the_exact_steering_reproduces_its_calibration_prompts(family):
    model = build(family, "wide", 0, torch.float64)
    ids = _prompts_sharing_a_context(6, 9, 3, 0)
    updates = icl.network_update(model, ids, kept_tokens=3)
    patch = icl.fit_lm_static_patch(updates)
    assert patch.n_queries == 6 and patch.residual.shape == (3, 3)
    assert (patch.residual <= 1e-20).all()  # 6 calibration references in 64 dimensions: an interpolation
    with torch.no_grad():
        prompted = model(ids).logits[:, -1]
    exact = icl.apply_lm_static_patch(model, patch, ids[:, -3:], exact_steering=updates)
    assert relative_error(exact, prompted) <= TOLERANCE[torch.float64]
    mean_steering = icl.apply_lm_static_patch(model, patch, ids[:, -3:])
    assert relative_error(mean_steering, prompted) > 1e-3  # the steering vectors are query-specific


def test_one_query_static_patch_is_that_querys_exact_patch_carried_to_the_others():
    model = build("qwen3", "small", 1, torch.float64)
    ids = _prompts_sharing_a_context(5, 8, 2, 1)
    updates = icl.network_update(model, ids, kept_tokens=2)
    static = icl.apply_lm_static_patch(model, icl.fit_lm_static_patch(updates, torch.tensor([2])), ids[:, -2:])
    carried = icl.transported_logits(model, updates, 2, ids[:, -2:])
    assert relative_error(static, carried) <= 1e-10
    with torch.no_grad():
        assert relative_error(carried[2:3], model(ids[2:3]).logits[:, -1]) <= TOLERANCE[torch.float64]


def test_static_patch_refuses_query_alone_updates_and_mismatched_lines():
    model = build("llama", "small", 2, torch.float64)
    ids = _prompts_sharing_a_context(3, 6, 2, 2)
    with pytest.raises(ValueError, match="kept_tokens=K"):
        icl.fit_lm_static_patch(icl.network_update(model, ids))
    patch = icl.fit_lm_static_patch(icl.network_update(model, ids, kept_tokens=2))
    with pytest.raises(ValueError, match="fitted for 2"):
        icl.apply_lm_static_patch(model, patch, ids[:, -3:])
    with pytest.raises(TypeError, match="LanguageStaticPatch"):
        icl.apply_lm_static_patch(model, "patch", ids[:, -2:])


def test_next_token_kl():
    logits = torch.randn(4, 30, dtype=torch.float64)
    assert torch.allclose(icl.next_token_kl(logits, logits), torch.zeros(4, dtype=torch.float64), atol=1e-15)
    other = torch.randn(4, 30, dtype=torch.float64)
    p, q = logits.softmax(-1), other.softmax(-1)
    assert torch.allclose(icl.next_token_kl(logits, other), (p * (p / q).log()).sum(-1))
    assert (icl.next_token_kl(logits, other) > 0).all()
    with pytest.raises(ValueError, match="differ in shape"):
        icl.next_token_kl(logits, other[:, :5])


def test_patch_contributions_split_the_layer_output_change():
    model = build("llama", "small", 3, torch.float64)
    ids = prompt_ids(2, 10, 3)
    weight, steering = icl.patch_contributions(model, ids)
    assert weight.shape == steering.shape == (2, 2)
    updates = icl.network_update(model, ids)
    assert torch.allclose(steering, torch.stack([u.delta_b.norm(dim=-1) for u in updates], dim=1))
    assert (weight > 0).all()
    with torch.no_grad():  # a layer whose MLP reads nothing: its weight patch changes nothing
        model.model.layers[1].mlp.up_proj.weight.zero_()
    weight, _ = icl.patch_contributions(model, ids)
    assert (weight[:, 1] == 0).all() and (weight[:, 0] > 0).all()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_greedy_continuation_through_patches_matches_the_model(family):
    model = build(family, "small", 4, torch.float64)
    ids = prompt_ids(3, 7, 4)
    plain = icl.greedy_continuation(model, ids, 4, through_patches=False)
    with torch.no_grad():
        reference = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)[:, 7:]
    assert torch.equal(plain.tokens, reference)
    assert torch.equal(plain.logits, plain.model_logits)
    via = icl.greedy_continuation(model, ids, 4, through_patches=True)
    assert torch.equal(via.tokens, plain.tokens)
    # the cached steps against the whole grown prompt run again, and the patched logits against them
    grown = torch.cat([ids, plain.tokens], dim=1)
    with torch.no_grad():
        full = torch.stack([model(grown[:, : 7 + n]).logits[:, -1] for n in range(4)], dim=1)
    assert relative_error(via.model_logits, full) <= TOLERANCE[torch.float64]
    assert relative_error(via.logits, full) <= TOLERANCE[torch.float64]


def test_patch_cosines_are_the_frobenius_cosines_of_the_dense_patches():
    model = build("mistral", "small", 5, torch.float64)
    ids = prompt_ids(4, 9, 5)
    update = icl.network_update(model, ids)[1]
    dense = update.delta_W.flatten(1)
    unit = dense / dense.norm(dim=-1, keepdim=True)
    assert torch.allclose(icl.patch_cosines(update), unit @ unit.T, atol=1e-12)


def test_norms_in_model_dtype_keep_the_model_and_compute_in_float64():
    model = build("llama", "wide", 6, torch.float64)
    ids = prompt_ids(2, 8, 6)
    exact = icl.norms_in_model_dtype(model)
    with torch.no_grad():
        a, b = model(ids).logits, exact(ids).logits
    assert relative_error(b, a) <= 1e-6  # the same model up to float32 rounding of the norms
    assert not torch.equal(a, b)
    with pytest.raises(TypeError, match="Llama family"):
        icl.norms_in_model_dtype(build("gpt2"))
