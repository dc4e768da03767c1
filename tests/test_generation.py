"""The generation protocol (Goldwaser et al.): greedy tokens through patches recomputed every step,
against the model's own, on tiny random models of tests/tiny_lms.py (no download)."""

from __future__ import annotations

import pytest
import torch
from tiny_lms import build, prompt_ids

import icl_lib as icl
from icl_lib.experiments.generation import GENERATION_PROMPTS, GenerationComparison, compare_generation


@pytest.mark.parametrize(("family", "steerings"), [("llama", ("bias", "down")), ("gemma3", ("bias", "norm"))])
def test_patched_generation_agrees_with_the_models_own_in_float64(family, steerings):
    model = build(family, "small", 1, torch.float64)
    ids = prompt_ids(2, 7, 1)
    results = compare_generation(model, ids, 6, steerings)
    assert set(results) == set(steerings)
    plain = icl.greedy_continuation(model, ids, 6, through_patches=False).tokens
    for steering, r in results.items():
        assert isinstance(r, GenerationComparison) and r.steering == steering
        assert r.plain.shape == r.patched.shape == r.errors.shape == r.margins.shape == (2, 6)
        assert torch.equal(r.plain, plain) and torch.equal(r.patched, plain)
        assert r.agreement.tolist() == [1.0, 1.0] and r.first_disagreement == [None, None]
        assert r.errors.max() <= 1e-10 and (r.margins >= 0).all()
    assert torch.equal(results["bias"].patched, icl.greedy_continuation(model, ids, 6, through_patches=True).tokens)


def test_the_reference_is_the_models_own_logits_on_the_patched_tokens():
    """Each step's error compares the patched logits with the model's own on the same tokens."""
    model = build("llama", "small", 2, torch.float32)
    ids = prompt_ids(1, 6, 2)
    r = compare_generation(model, ids, 4)["bias"]
    sequence = torch.cat([ids, r.patched], 1)
    for k in range(4):
        prefix = sequence[:, : ids.shape[1] + k]
        with torch.no_grad():
            own = model(prefix).logits[:, -1]
        updates = icl.network_update(model, prefix)
        patched = icl.forward_with_updates(model, updates, prefix[:, -1:])
        assert abs(icl.relative_error(patched, own).item() - r.errors[0, k].item()) <= 1e-6
        top = own.topk(2).values[0]
        assert abs((top[0] - top[1]).item() - r.margins[0, k].item()) <= 1e-4


def test_agreement_and_first_disagreement_count_positions():
    plain = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    patched = torch.tensor([[1, 2, 3, 4], [5, 0, 7, 0]])
    zeros = torch.zeros(2, 4)
    r = GenerationComparison(plain, patched, zeros, zeros, "bias")
    assert r.n_tokens == 4 and r.agreement.tolist() == [1.0, 0.5] and r.first_disagreement == [None, 1]


def test_the_plain_sequence_is_the_models_own_greedy_generation():
    model = build("llama", "small", 3, torch.float64)
    ids = prompt_ids(1, 6, 3)
    r = compare_generation(model, ids, 5)["bias"]
    assert torch.equal(r.plain, icl.greedy_continuation(model, ids, 5, through_patches=False).tokens)
    assert torch.equal(r.plain, model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)[:, 6:])


def test_bad_arguments_are_refused():
    model = build("llama", "small", 0, torch.float64)
    ids = prompt_ids(1, 5, 0)
    with pytest.raises(ValueError, match="n_tokens must be a positive int"):
        compare_generation(model, ids, 0)
    with pytest.raises(ValueError, match="distinct names"):
        compare_generation(model, ids, 2, "bias")
    with pytest.raises(ValueError, match="the context is empty"):
        compare_generation(model, ids[:, :1], 2)
    with pytest.raises(ValueError, match="use steering='down'"):
        compare_generation(model, ids, 2, ("norm",))


def test_the_protocols_prompts_are_five_distinct_texts():
    assert len(GENERATION_PROMPTS) == 5 and len(set(GENERATION_PROMPTS)) == 5
    assert all(isinstance(p, str) and p == p.rstrip(" ") for p in GENERATION_PROMPTS)


@pytest.mark.parametrize("family", ["llama", "gemma3", "mixtral"])
def test_left_padded_prompts_continue_as_they_do_alone(family):
    """A batch of prompts of different lengths, padded on the left, gives each row the tokens and
    (to round-off) the logits it gets alone, with and without the patches."""
    model = build(family, "small", 4, torch.float64)
    long, short = prompt_ids(1, 9, 4), prompt_ids(1, 5, 5)
    ids = torch.cat([long, torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1)])
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    for through in (False, True):
        batch = icl.greedy_continuation(model, ids, 5, through_patches=through, attention_mask=mask)
        for row, alone_ids in ((0, long), (1, short)):
            alone = icl.greedy_continuation(model, alone_ids, 5, through_patches=through)
            assert torch.equal(batch.tokens[row : row + 1], alone.tokens)
            assert torch.allclose(batch.logits[row : row + 1], alone.logits, rtol=0, atol=1e-10)
            assert torch.allclose(batch.model_logits[row : row + 1], alone.model_logits, rtol=0, atol=1e-10)
    r = compare_generation(model, ids, 5, attention_mask=mask)["bias"]
    assert r.agreement.tolist() == [1.0, 1.0] and r.errors.max() <= 1e-10
    with pytest.raises(ValueError, match="pad on the left"):
        icl.greedy_continuation(model, ids, 2, through_patches=False, attention_mask=mask.flip(1))


class _Words:
    """A stand-in tokenizer: one id per word (1 + its length), as ``tokenizer(text, return_tensors="pt")``."""

    def __call__(self, text, return_tensors):
        class Encoded:
            input_ids = torch.tensor([[1 + len(w) for w in text.split()]])
        return Encoded()


def test_left_padded_pads_on_the_left():
    ids, mask = icl.left_padded(_Words(), ["a bb ccc", "dddd"])
    assert ids.tolist() == [[2, 3, 4], [0, 0, 5]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="non-empty sequence of non-empty strings"):
        icl.left_padded(_Words(), "one text")
