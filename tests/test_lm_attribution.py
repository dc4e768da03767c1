"""Causal tests of the patches, other references, and the intervals (icl_lib.experiments.lm_attribution),
on small random language models (no download)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TOLERANCE, relative_error
from tiny_lms import build, prompt_ids

import icl_lib as icl


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
@pytest.mark.parametrize("prefix, kept", [(0, 1), (2, 1), (3, 2)])
def test_patches_against_a_prefix_reference_reproduce_the_prompt(family, prefix, kept):
    model = build(family, "small", 0, torch.float64)
    ids = prompt_ids(3, 11, 0)
    ref = icl.reference_update(model, ids, prefix, kept)
    assert ref.tokens.shape == (3, prefix + kept) and torch.equal(ref.tokens[:, :prefix], ids[:, :prefix])
    with torch.no_grad():
        prompted = model(ids).logits[:, -1]
    patched = icl.forward_with_updates(model, ref.updates, ref.tokens)
    assert relative_error(patched, prompted) <= TOLERANCE[torch.float64]
    if prefix:  # a causal model computes the prefix without looking at what follows: no patch there,
        # up to rounding. Gemma 2's RMSNorm computes in float32 even in a float64 model, and under AVX2
        # the same row rounds differently in runs of another length (1.2e-7 measured), so its bound is
        # float32's.
        bound = 1e-5 if family == "gemma2" else 1e-12
        for update in ref.updates:
            assert update.u[:, :prefix].abs().max() <= bound * update.u[:, -1].abs().max()
            assert update.delta_b[:, :prefix].abs().max() <= bound * update.delta_b[:, -1].abs().max()
    with torch.no_grad():  # the reference run without patches is not the prompt
        assert relative_error(icl.forward_with_updates(
            model, [icl.ImplicitUpdate(torch.zeros_like(u.u), u.v, torch.zeros_like(u.delta_b), u.position,
                                       u.n_tokens, u.position_ids) for u in ref.updates], ref.tokens), prompted) > 1e-3


@pytest.mark.parametrize("family", ["llama", "gemma2", "gemma3", "gpt2"])
def test_the_reference_query_reads_its_prefix_across_the_position_gap(family):
    # transformers reads a jump in position ids without a mask as the border of two packed
    # sequences; the library's explicit mask must let the query attend to the prefix.
    model = build(family, "small", 3, torch.float64)
    ids = prompt_ids(2, 5, 3)  # within the tiny Gemma 2's window of 5 positions
    ref = icl.reference_update(model, ids, 2, 1)
    positions = torch.tensor([0, 1, ids.shape[1] - 1]).expand(2, 3)
    zero = [icl.ImplicitUpdate(torch.zeros_like(u.u), u.v, torch.zeros_like(u.delta_b), u.position,
                               u.n_tokens, u.position_ids) for u in ref.updates]
    with torch.no_grad():
        ours = icl.forward_with_updates(model, zero, ref.tokens)
        seen = model(input_ids=ref.tokens, position_ids=positions, use_cache=False,
                     attention_mask=torch.ones_like(ref.tokens)).logits[:, -1]
        packed = model(input_ids=ref.tokens, position_ids=positions, use_cache=False).logits[:, -1]
    assert relative_error(ours, seen) <= TOLERANCE[torch.float64]
    assert relative_error(packed, seen) > 1e-3  # what the run would be without the explicit mask


def test_no_prefix_is_network_update_with_kept_tokens():
    model = build("qwen3", "small", 1, torch.float64)
    ids = prompt_ids(2, 9, 1)
    ref = icl.reference_update(model, ids, 0, 3)
    plain = icl.network_update(model, ids, kept_tokens=3)
    for a, b in zip(ref.updates, plain):
        assert torch.equal(a.u, b.u) and torch.equal(a.v, b.v) and torch.equal(a.delta_b, b.delta_b)


def test_reference_update_refuses_bad_counts_and_an_empty_context():
    model = build("llama", "small", 0, torch.float64)
    ids = prompt_ids(2, 5, 0)
    with pytest.raises(ValueError, match="prefix_tokens"):
        icl.reference_update(model, ids, -1)
    with pytest.raises(ValueError, match="kept_tokens"):
        icl.reference_update(model, ids, 1, 0)
    with pytest.raises(ValueError, match="context"):
        icl.reference_update(model, ids, 3, 2)


def test_part_effects_are_the_patch_contributions_and_sum_to_the_layer_change():
    model = build("llama", "small", 2, torch.float64)
    ids = prompt_ids(3, 8, 2)
    effects = icl.part_effects(model, ids)
    weight, steering = icl.patch_contributions(model, ids)
    assert relative_error(effects.change.norm(dim=-1), weight) <= 1e-12
    assert relative_error(effects.steering.norm(dim=-1), steering) <= 1e-12
    with torch.no_grad():
        assert relative_error(effects.logits, model(ids).logits[:, -1]) <= 1e-12
    share = effects.share()
    assert share.shape == (3, len(effects.reference.updates)) and ((share >= 0) & (share <= 1)).all()
    assert (effects.cosine().abs() <= 1 + 1e-12).all()


def test_ablation_scores_batch_the_settings_and_zero_the_chosen_parts():
    model = build("llama", "small", 3, torch.float64)
    ids = prompt_ids(4, 9, 3)
    updates = icl.network_update(model, ids)
    with torch.no_grad():
        prompted = model(ids).logits[:, -1]
        bare = model(ids[:, -1:], position_ids=torch.full((4, 1), 8)).logits[:, -1]
    n = len(updates)
    on, off = torch.ones(1, n, dtype=torch.bool), torch.zeros(1, n, dtype=torch.bool)
    layer0 = off.clone()
    layer0[0, 0] = True
    weight = torch.cat([on, off, on, layer0])
    steering = torch.cat([on, off, off, layer0])
    result = icl.ablation_scores(model, updates, ids[:, -1:], prompted, weight, steering, rows_per_pass=8)
    assert result.kl.shape == (4, 4) and result.tokens.shape == (4, 4)
    assert result.kl[0].abs().max() <= 1e-10 and torch.equal(result.tokens[0], prompted.argmax(-1))
    assert torch.allclose(result.kl[1], icl.next_token_kl(prompted, bare), rtol=1e-9, atol=1e-12)
    alone = icl.forward_with_updates(model, [icl.ImplicitUpdate(u.u, u.v, torch.zeros_like(u.delta_b), u.position,
                                                                u.n_tokens, u.position_ids) for u in updates],
                                     ids[:, -1:])
    assert torch.allclose(result.kl[2], icl.next_token_kl(prompted, alone), rtol=1e-9, atol=1e-12)
    answers = [(t,) for t in prompted.argmax(-1).tolist()]
    assert result.hits(answers)[0].all()
    with pytest.raises(ValueError, match="bool tensor"):
        icl.ablation_scores(model, updates, ids[:, -1:], prompted, weight[:, 1:], steering)


def test_wilson_interval():
    z = 1.959964
    low, high = icl.wilson_interval(0, 40)
    assert low == 0 and math.isclose(high, z * z / (40 + z * z), rel_tol=1e-12)
    low, high = icl.wilson_interval(20, 40)
    assert math.isclose(low + high, 1.0, rel_tol=1e-12) and low < 0.5 < high
    assert icl.wilson_interval(40, 40)[1] == 1.0
    assert icl.format_proportion(38, 40) == "0.95 0.83-0.99"
    for bad in ((5, 4), (-1, 4)):
        with pytest.raises(ValueError, match="successes"):
            icl.wilson_interval(*bad)
    with pytest.raises(ValueError, match="n must"):
        icl.wilson_interval(0, 0)


def test_bootstrap_interval_is_reproducible_and_contains_the_median():
    values = torch.arange(1.0, 22.0)
    low, high = icl.bootstrap_interval(values)
    assert (low, high) == icl.bootstrap_interval(values) and low <= 11.0 <= high
    assert icl.bootstrap_interval(torch.full((5,), 2.0)) == (2.0, 2.0)
    with pytest.raises(ValueError, match="statistic"):
        icl.bootstrap_interval(values, "mode")
    with pytest.raises(ValueError, match="1-d"):
        icl.bootstrap_interval(torch.ones(1))


def test_alignment_by_kind_averages_the_right_pairs():
    cos = torch.tensor([[1.0, 0.8, 0.6, 0.1], [0.8, 1.0, 0.4, 0.2], [0.6, 0.4, 1.0, 0.3], [0.1, 0.2, 0.3, 1.0]])
    hidden = torch.eye(4)
    means = icl.alignment_by_kind(cos, hidden, ["a", "a", "a", "b"], ["x", "x", "y", "x"], [0, 1, 0, 0])
    assert means["same demonstrations, other query"] == pytest.approx((0.8, 0.0))
    assert means["other demonstrations, same query"] == pytest.approx((0.6, 0.0))
    assert means["other demonstrations, other query"] == pytest.approx((0.4, 0.0))
    assert means["other task"] == pytest.approx((0.2, 0.0))
    with pytest.raises(ValueError, match="same n prompts"):
        icl.alignment_by_kind(cos, hidden[:3], ["a"] * 4, ["x"] * 4, [0] * 4)


def test_static_patch_errors_on_calibration_and_held_out_rows():
    model = build("llama", "wide", 0, torch.float64)
    shared = prompt_ids(1, 9, 0).expand(6, 9)
    ids = torch.cat([shared, prompt_ids(6, 2, 1)], dim=1)
    updates = icl.network_update(model, ids, kept_tokens=2)
    patch = icl.fit_lm_static_patch(updates, torch.arange(4))
    weight, steering = icl.static_patch_errors(patch, updates, torch.arange(4))
    assert weight.max() <= 1e-10 and steering.min() > 1e-3  # the mean steering vector is no query's own
    weight, _ = icl.static_patch_errors(patch, updates, torch.tensor([4, 5]))
    assert weight.min() > 1e-3


def test_prefixed_puts_the_prefix_before_every_row():
    ids = prompt_ids(2, 4, 0)
    out = icl.lm_attribution.prefixed(ids, [7, 8])
    assert out.shape == (2, 6) and out[:, :2].tolist() == [[7, 8], [7, 8]] and torch.equal(out[:, 2:], ids)
