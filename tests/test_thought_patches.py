"""Thought patches and function vectors on tiny random models (no download)."""

import pytest
import torch

from icl_lib.experiments import function_vectors as fv
from icl_lib.experiments import thought_patches as tp

import tiny_lms

FAMILIES = ["llama", "gemma3"]


def _prompts(q: int = 3, context: int = 5, tail: int = 4, seed: int = 0) -> tp.ThoughtPrompts:
    """Prompts [BOS, context (shared), tail (per query)]; bare = [BOS, tail]."""
    ids = tiny_lms.prompt_ids(q, tail, seed=seed)
    shared = tiny_lms.prompt_ids(1, context, seed=seed + 1).expand(q, context)
    bos = torch.ones(q, 1, dtype=torch.long)
    answers = tuple((int(a),) for a in ids[:, -1])
    return tp.ThoughtPrompts(prompted=torch.cat([bos, shared, ids], 1), bare=torch.cat([bos, ids], 1),
                             answers=answers, start_tokens=1)


def _full_logits(model, ids):
    return tp.thought_logits(model, None, ids)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("sequential", [True, False])
@pytest.mark.parametrize("output", ["vector", "absorb"])
def test_one_query_per_position_patch_is_exact(family, sequential, output):
    """With one calibration query, one patch per position and no ridge, the fit is the exact patch:
    the bare run reproduces the prompted logits at the last aligned token."""
    model = tiny_lms.build(family, "small")
    prompts = _prompts(q=1)
    patch = tp.fit_thought_patch(model, tp.thought_data(model, prompts), sequential=sequential, pooled=False, ridge=0.0, output=output)
    want = _full_logits(model, prompts.prompted)
    got = tp.thought_logits(model, patch, prompts.bare)
    assert torch.allclose(got, want, atol=1e-8, rtol=1e-6)
    assert not torch.allclose(_full_logits(model, prompts.bare), want, atol=1e-3)  # the context matters


@pytest.mark.parametrize("family", FAMILIES)
def test_pooled_ridge_fit_moves_towards_prompted(family):
    """A pooled ridge patch fitted on several queries brings their bare logits closer to the prompted ones
    than no patch, and a larger ridge leaves a larger input residual."""
    model = tiny_lms.build(family, "small")
    prompts = _prompts(q=6)
    want = _full_logits(model, prompts.prompted)
    far = (_full_logits(model, prompts.bare) - want).norm()
    data = tp.thought_data(model, prompts)
    small = tp.fit_thought_patch(model, data, ridge=1e-3)
    large = tp.fit_thought_patch(model, data, ridge=10.0)
    assert (tp.thought_logits(model, small, prompts.bare) - want).norm() < far
    assert small.layers[0].unexplained < large.layers[0].unexplained
    assert small.layers[0].in_left.shape[0] == 1  # pooled: one patch for every position


def test_residual_shifts_match_vector_fit():
    model = tiny_lms.build("llama", "small")
    prompts = _prompts(q=3)
    data = tp.thought_data(model, prompts)
    shifts = tp.residual_shifts(model, data)
    assert shifts.shape[:3] == (2, 3, prompts.bare.shape[1])
    patch = tp.fit_thought_patch(model, data, sequential=False, pooled=True, output="vector")
    assert torch.allclose(patch.layers[1].vector[0], shifts[1].mean((0, 1)).to(patch.layers[1].vector.dtype))


def test_cross_fitted_accuracy_shapes():
    model = tiny_lms.build("llama", "small")
    prompts = _prompts(q=4)
    data = tp.thought_data(model, prompts)
    patched = tp.cross_fitted_accuracy(model, data, folds=2)
    assert patched.shape == (4,) and patched.dtype == torch.bool
    want = tp.thought_logits(model, None, prompts.prompted[:, :-1]).argmax(-1)
    assert data.prompted_correct.tolist() == [int(w) in a for w, a in zip(want, prompts.answers)]


@pytest.mark.parametrize("family", FAMILIES)
def test_patched_drift_is_zero_for_the_exact_patch_and_not_without_one(family):
    model = tiny_lms.build(family, "small")
    prompts = _prompts(q=1)
    data = tp.thought_data(model, prompts)
    exact = tp.fit_thought_patch(model, data, pooled=False, ridge=0.0, output="vector")
    rows = torch.arange(1)
    drift = tp.patched_drift(model, data, exact, rows)
    assert drift.shape == (len(exact.layers) - 1, 1) and drift.max() < 1e-5
    none = tp.ThoughtPatch(tuple(tp.ThoughtLayer(torch.zeros_like(l.in_left), l.in_right) for l in exact.layers),
                           True, False, 0.0, "none", 1)
    assert tp.patched_drift(model, data, none, rows).max() > 1e-2
    with pytest.raises(ValueError, match="one layer per decoder layer"):
        tp.patched_drift(model, data, tp.ThoughtPatch(exact.layers[:1], True, False, 0.0, "vector", 1), rows)
    with pytest.raises(ValueError, match="another model"):
        tp.patched_drift(tiny_lms.build(family, "small", 1), data, exact, rows)


def test_bad_inputs():
    model = tiny_lms.build("llama", "small")
    prompts = _prompts()
    data = tp.thought_data(model, prompts)
    with pytest.raises(ValueError, match="output"):
        tp.fit_thought_patch(model, data, output="bias")
    with pytest.raises(ValueError, match="ridge"):
        tp.fit_thought_patch(model, data, ridge=-1.0)
    with pytest.raises(TypeError, match="ThoughtData"):
        tp.fit_thought_patch(model, prompts)
    with pytest.raises(TypeError, match="ThoughtPrompts"):
        tp.thought_data(model, prompts.bare)
    with pytest.raises(ValueError, match="another model"):
        tp.fit_thought_patch(tiny_lms.build("llama", "small", seed=1), data)
    with pytest.raises(ValueError, match="folds"):
        tp.cross_fitted_accuracy(model, data, folds=1)
    with pytest.raises(TypeError, match="parallel"):
        tp.thought_data(tiny_lms.build("gpt_neox", "small"), prompts)


@pytest.mark.parametrize("family", FAMILIES)
def test_interventions_match_direct_runs(family):
    """The cached last-token interventions give what a full run with the same edit gives."""
    model = tiny_lms.build(family, "small", dtype=torch.float32)
    ids = tiny_lms.prompt_ids(3, 5, seed=3)
    states = fv.last_token_states(model, ids)
    answers = [tuple(row) for row in model(ids).logits[:, -1].argmax(-1, keepdim=True).tolist()]
    vector = states[0].mean(0)
    edits = [(-1, vector, "add"), (0, vector, "replace"), (1, 5 * vector, "add")]
    got = fv.intervention_accuracy(model, ids, answers, edits, chunk=2)
    assert got[0].all()  # no edit: the model's own answers
    for k, (layer, vec, mode) in enumerate(edits[1:], start=1):
        def hook(module, args, out, vec=vec, mode=mode):
            hidden = out.clone()
            hidden[:, -1] = vec if mode == "replace" else hidden[:, -1] + vec
            return hidden
        handle = model.model.layers[layer].register_forward_hook(hook)
        with torch.no_grad():
            guess = model(ids).logits[:, -1].argmax(-1).tolist()
        handle.remove()
        assert got[k].tolist() == [g in a for g, a in zip(guess, answers)]


@pytest.mark.parametrize("family", FAMILIES)
def test_head_effects_and_function_vector(family):
    model = tiny_lms.build(family, "small", dtype=torch.float32)
    clean = tiny_lms.prompt_ids(4, 7, seed=5)
    corrupted = fv.shuffled_answers(clean, [1, 3, 5])
    assert (corrupted[:, [1, 3, 5]].sort(-1).values == clean[:, [1, 3, 5]].sort(-1).values).all()
    assert not torch.equal(corrupted, clean)
    answers = clean[:, -1]
    mean = fv.head_inputs(model, clean).mean(1)
    effects = fv.head_indirect_effects(model, corrupted, answers, mean)
    heads = model.config.num_attention_heads
    assert effects.shape == (2, heads)
    # one head by hand: layer 1, head 0, on a full run
    width = mean.shape[1] // heads

    def patch(module, args):
        x = args[0].clone()
        x[:, -1, :width] = mean[1, :width]
        return (x,)

    with torch.no_grad():
        base = torch.softmax(model(corrupted).logits[:, -1].double(), -1)[torch.arange(4), answers]
        handle = model.model.layers[1].self_attn.o_proj.register_forward_pre_hook(patch)
        moved = torch.softmax(model(corrupted).logits[:, -1].double(), -1)[torch.arange(4), answers]
        handle.remove()
    assert abs((moved - base).mean().item() - effects[1, 0].item()) < 1e-5
    vector, chosen = fv.function_vector(model, mean, effects, 2)
    assert vector.shape == (model.config.hidden_size,) and len(chosen) == 2
    layer, head = chosen[0]
    assert effects[layer, head] == effects.max()


def test_vector_sweep_shapes_and_no_edit_row():
    model = tiny_lms.build("llama", "small", dtype=torch.float32)
    q, context, tail = 4, 6, 4
    ids = tiny_lms.prompt_ids(q, tail, seed=7)
    shared = tiny_lms.prompt_ids(1, context, seed=8).expand(q, context)
    bos = torch.ones(q, 1, dtype=torch.long)
    prompts = tp.ThoughtPrompts(prompted=torch.cat([bos, shared, ids], 1), bare=torch.cat([bos, ids], 1),
                                answers=tuple((int(a),) for a in ids[:, -1]), start_tokens=1,
                                demonstration_answers=(2, 4, 6))
    data = tp.thought_data(model, prompts)
    sweep = fv.vector_sweep(model, data, n_heads=2, n_scan=2)
    assert sweep.correct.shape == (5, 2, q) and sweep.bare.shape == (q,)
    assert sweep.effects[0].shape == (2, model.config.num_attention_heads)
    assert sweep.bare.tolist() == data.bare_correct.tolist()  # the no-edit row is the bare model
    assert len(sweep.heads) == 2 and len(sweep.heads[0]) == 2
    # the summed steering vector at the first layer is the one-layer vector there
    fold = sweep.vectors[0]
    assert torch.equal(fold[fv.SWEEP_METHODS[2]][0], fold[fv.SWEEP_METHODS[3]][0])
    one = fv.vector_sweep(model, data, layers=[1], n_heads=2, n_scan=2)
    assert torch.equal(one.correct[:, 0], sweep.correct[:, 1])
    with pytest.raises(ValueError, match="layers"):
        fv.vector_sweep(model, data, layers=[5])
