"""The families beyond Llama: parallel blocks, mixtures of experts, and a family added by a user.

Every family's exactness, left padding, every position, trajectories and kept tokens are tested
in test_language_models.py (its tests run every builder of tiny_lms); this file tests what is
particular to some families, and register_family.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import TOLERANCE, relative_error
from tiny_lms import build, prompt_ids
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRMSNorm

import icl_lib as icl
from icl_lib.architectures import families
from icl_lib.core.update import LowRankPatch
from icl_lib.experiments.lm_compression import LanguageStaticPatch

PARALLEL = ["gpt_neox", "gptj", "phi", "falcon", "cohere", "stablelm"]
SEQUENTIAL_TWINS = ["gpt_neox_sequential", "stablelm_sequential", "falcon_sequential"]
MIXTURES = ["mixtral", "olmoe", "qwen3_moe", "qwen2_moe"]
DTYPES = [torch.float64, torch.float32]


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits[:, -1]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("family", PARALLEL)
def test_parallel_blocks_carry_the_context_in_the_steering_vector_alone(family, dtype):
    """Proposition (parallel-residual layers): the MLP reads the layer's own input, so the weight
    patch vanishes at every layer and Δb′ alone reproduces the prompt."""
    model = build(family, "small", 0, dtype)
    ids = prompt_ids(3, 10, 4)
    updates = icl.network_update(model, ids)
    eps = torch.finfo(dtype).eps
    for update in updates:
        # u = W_s (m_i − a) with m_i and a the same normalised input token: zero up to round-off
        assert (update.u.norm(dim=-1) <= 64 * eps * update.v.norm(dim=-1) * 10).all()
        assert (update.delta_b.norm(dim=-1) > 1e-3).all()
    patched = icl.forward_with_updates(model, updates, ids[:, -1:])
    assert relative_error(patched, _logits(model, ids)) <= TOLERANCE[dtype]
    weight, steering = icl.patch_contributions(model, ids)
    assert (weight <= 1e-4 * steering).all()


@pytest.mark.parametrize("family", SEQUENTIAL_TWINS)
def test_sequential_twins_of_parallel_families_have_a_real_weight_patch(family):
    model = build(family, "small", 0, torch.float64)
    ids = prompt_ids(3, 10, 4)
    updates = icl.network_update(model, ids)
    assert all((u.frobenius_norm() > 1e-3).all() for u in updates)
    patched = icl.forward_with_updates(model, updates, ids[:, -1:])
    assert relative_error(patched, _logits(model, ids)) <= TOLERANCE[torch.float64]


def _routes(model: nn.Module) -> list[list[torch.Tensor]]:
    """Hooks recording every MoE router's chosen experts, one list per layer."""
    chosen: list[list[torch.Tensor]] = []
    for layer in model.model.layers:
        chosen.append([])
        layer.mlp.gate.register_forward_hook(lambda m, a, out, sink=chosen[-1]: sink.append(out[2].clone()))
    return chosen


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("family", MIXTURES)
def test_patched_router_routes_the_query_as_the_prompt_does(family, dtype):
    model = build(family, "small", 1, dtype)
    ids = prompt_ids(3, 9, 5)
    updates = icl.network_update(model, ids)
    # the router's rows are part of W_s: the update's left factor covers router and experts
    first = families.first_layer(model.model.layers[0], families.family_of(model))
    assert updates[0].u.shape[-1] == first.out_features > model.config.hidden_size
    routes = _routes(model)
    icl.forward_with_updates(model, updates, ids[:, -1:])
    patched_routes = [r[-1] for r in routes]
    with torch.no_grad():
        model(ids)
    prompted_routes = [r[-1].view(3, 9, -1)[:, -1] for r in routes]
    bare = [r[-2] for r in routes]  # (not used for equality: the bare query routes otherwise somewhere)
    assert len(bare) == len(prompted_routes)
    for got, want in zip(patched_routes, prompted_routes):
        assert torch.equal(got.sort(-1).values, want.sort(-1).values)


def test_mixture_of_experts_in_float32_with_the_default_grouped_kernel():
    model = build("mixtral", "small", 2, torch.float32)
    model.set_experts_implementation("grouped_mm")
    ids = prompt_ids(2, 8, 6)
    updates = icl.network_update(model, ids)
    patched = icl.forward_with_updates(model, updates, ids[:, -1:])
    assert relative_error(patched, _logits(model, ids)) <= TOLERANCE[torch.float32]


def test_a_fitted_low_rank_patch_is_refused_by_a_mixture_of_experts():
    model = build("mixtral", "small", 0, torch.float64)
    ids = prompt_ids(2, 8, 6)
    d = model.config.hidden_size
    first = families.first_layer(model.model.layers[0], families.family_of(model))
    layer = LowRankPatch(torch.zeros(1, first.out_features, 1, dtype=torch.float64),
                         torch.zeros(1, d, 1, dtype=torch.float64), None)
    n_layers = len(model.model.layers)
    static = LanguageStaticPatch(layers=(layer,) * n_layers, position_ids=torch.tensor([7]), n_queries=1,
                                 residual=torch.zeros(n_layers, 1))
    with pytest.raises(TypeError, match="carries no δ"):
        icl.apply_lm_static_patch(model, static, ids[:, -1:])


def test_granite_stores_the_steering_vector_in_the_mlp_outputs_units():
    model = build("granite", "small", 0, torch.float64)
    ids = prompt_ids(2, 8, 3)
    updates = icl.network_update(model, ids)
    residual = icl.block_gaps(model, ids)  # the whole patched layers are exact
    assert (residual <= 1e-10).all()
    multiplier = model.model.layers[0].residual_multiplier
    # scaling Δb′ by the multiplier instead would miss the prompt
    wrong = [dataclasses.replace(u, delta_b=u.delta_b * multiplier) for u in updates]
    assert relative_error(icl.forward_with_updates(model, wrong, ids[:, -1:]), _logits(model, ids)) > 1e-6


# --- a family the library does not know, defined here ------------------------------------


class ParrotFeedForward(nn.Module):
    """A gated MLP with its own names: w_gate, w_up, w_down."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.w_gate = nn.Linear(width, hidden, bias=False)
        self.w_up = nn.Linear(width, hidden, bias=False)
        self.w_down = nn.Linear(hidden, width, bias=False)

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        return self.w_down(torch.nn.functional.gelu(self.w_gate(m)) * self.w_up(m))


class ParrotBlock(nn.Module):
    """A pre-norm layer with renamed parts, run by Llama's model code."""

    def __init__(self, config: LlamaConfig, index: int):
        super().__init__()
        self.norm1 = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.attend = LlamaAttention(config, index)
        self.norm2 = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.ffn = ParrotFeedForward(config.hidden_size, config.intermediate_size)

    def forward(self, hidden_states, attention_mask=None, position_ids=None, position_embeddings=None, **kwargs):
        h = hidden_states + self.attend(self.norm1(hidden_states), position_embeddings=position_embeddings,
                                        attention_mask=attention_mask, **kwargs)[0]
        return h + self.ffn(self.norm2(h))


class ParrotForCausalLM(LlamaForCausalLM):
    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        self.model.blocks = nn.ModuleList(ParrotBlock(config, i) for i in range(config.num_hidden_layers))
        self.model.layers = self.model.blocks  # Llama's forward runs model.layers


PARROT = icl.DecoderFamily(
    name="Parrot",
    model_classes=("ParrotForCausalLM",),
    layer_classes=("ParrotBlock",),
    layers="model.blocks",
    first=("ffn.w_gate", "ffn.w_up"),
    mlp="ffn",
    residual="norm2",
    shift="ffn",
)


@pytest.fixture
def registry(monkeypatch):
    """The registered families, restored after the test."""
    monkeypatch.setattr(families, "_FAMILIES", list(families._FAMILIES))


def _parrot(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=53, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = ParrotForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.2) if p.ndim >= 2 else p.uniform_(0.5, 1.5)
    return model.to(dtype).eval()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_a_registered_family_works_everywhere(registry, dtype):
    model = _parrot(dtype)
    ids = torch.randint(0, 53, (3, 9), generator=torch.Generator().manual_seed(1))
    with pytest.raises(TypeError, match="layer 0 .* is a ParrotBlock.*register_family"):
        icl.network_update(model, ids)  # taken for a Llama, whose layers it does not have
    icl.register_family(PARROT)
    updates = icl.network_update(model, ids)
    assert updates[0].u.shape == (3, 80)
    patched = icl.forward_with_updates(model, updates, ids[:, -1:])
    assert relative_error(patched, _logits(model, ids)) <= TOLERANCE[dtype]
    gaps = icl.block_gaps(model, ids, position="all", relative=True)
    assert gaps.shape == (3, 2, 9) and (gaps <= 100 * TOLERANCE[dtype]).all()
    trajectory = icl.implicit_trajectory(model, ids, context_lengths=[0, 4, 8])
    assert trajectory.logits.shape == (3, 3, 53)


def test_register_family_refuses_bad_records_and_duplicates(registry):
    with pytest.raises(TypeError, match="register_family takes an icl_lib.DecoderFamily"):
        icl.register_family("Parrot")
    with pytest.raises(TypeError, match="DecoderFamily.first must be a non-empty tuple of str"):
        icl.DecoderFamily(name="X", model_classes=("X",), layer_classes=("X",), layers="l", first="ffn.w",
                          mlp="ffn", residual=None, shift="ffn")
    icl.register_family(PARROT)
    with pytest.raises(ValueError, match="registered already"):
        icl.register_family(PARROT)
    with pytest.raises(ValueError, match="belong to the registered family 'Llama"):
        icl.register_family(icl.DecoderFamily(name="Y", model_classes=("LlamaForCausalLM",), layer_classes=("Y",),
                                              layers="l", first=("f",), mlp="f", residual=None, shift="f"))
    assert icl.supported_families()[-1] is PARROT


def test_a_family_whose_sites_do_not_resolve_is_refused_naming_the_site(registry):
    icl.register_family(icl.DecoderFamily(**{**PARROT.__dict__, "residual": "norm_two"}))
    with pytest.raises(TypeError, match="has no 'norm_two', a site the Parrot family names"):
        icl.network_update(_parrot(torch.float64), torch.ones(1, 4, dtype=torch.long))


def test_an_unknown_model_names_the_families_and_register_family():
    class Unknown(LlamaForCausalLM):
        pass

    Unknown.__name__ = "UnknownForCausalLM"
    model = nn.Module()
    model.__class__ = type("OtherLM", (nn.Module,), {})
    with pytest.raises(TypeError, match="register_family"):
        icl.network_update(model, torch.ones(1, 3, dtype=torch.long))


def test_families_are_listed_in_the_readme_and_the_api_page():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for page in (root / "README.md", root / "book" / "api.md"):
        text = page.read_text(encoding="utf-8")
        missing = [f.name for f in icl.supported_families() if f.name not in text]
        assert not missing, f"{page.name} does not list {missing}"
        assert "register_family" in text


# --- output-side patches: Δb′ carried by W_down or by the post-MLP norm's scale ---------------

DOWN = ["llama", "qwen2", "gemma", "phi3", "granite", "gpt2", "gpt_neox", "gpt_neox_sequential", "gptj", "phi",
        "falcon", "cohere", "stablelm", "olmo"]
NORM = ["gemma2", "gemma3", "gemma3_multimodal", "olmo2"]


def _norm_condition(updates) -> float:
    """``max_ℓ ‖Δb′ ⊘ c‖_∞ ‖c‖_∞ / ‖Δb′‖_∞`` (c = s ⊙ n): how much the scale patch ``Δs = Δb′ ⊘ n`` amplifies a
    round-off change of ``n`` at the query (large where an entry of ``n`` is small)."""
    worst = 0.0
    for u in updates:
        d, n = u.delta_b, u.carrier
        worst = max(worst, float(((d / n).abs().amax(-1) * n.abs().amax(-1) / d.abs().amax(-1)).max()))
    return worst


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("family", DOWN)
def test_steering_through_w_down_reproduces_the_prompt_without_an_added_vector(family, dtype):
    model = build(family, "small", 3, dtype)
    ids = prompt_ids(3, 11, 7)
    for kept in (1, 3):
        updates = icl.network_update(model, ids, kept_tokens=kept, steering="down")
        assert all(u.steering == "down" and u.carrier.shape[:-1] == u.delta_b.shape[:-1] for u in updates)
        patched = icl.forward_with_updates(model, updates, ids[:, -kept:])
        assert relative_error(patched, _logits(model, ids)) <= TOLERANCE[dtype]
    # without Δb′ in W_down the patched model misses the prompt: the patch does carry it
    dropped = [dataclasses.replace(u, delta_b=torch.zeros_like(u.delta_b)) for u in updates]
    assert relative_error(icl.forward_with_updates(model, dropped, ids[:, -3:]), _logits(model, ids)) > 1e-4


@pytest.mark.parametrize("family", DOWN[:4])
def test_steering_through_w_down_with_left_padding(family):
    model = build(family, "small", 2, torch.float64)
    ids = prompt_ids(2, 10, 3)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    patched = icl.forward_with_updates(model, icl.network_update(model, ids, attention_mask=mask, steering="down"),
                                       ids[:, -1:])
    for row, start in ((0, 4), (1, 0)):
        want = _logits(model, ids[row : row + 1, start:])
        assert relative_error(patched[row : row + 1], want) <= TOLERANCE[torch.float64]


@pytest.mark.parametrize("family", NORM)
def test_steering_through_the_norm_scale_is_exact_in_float64(family):
    model = build(family, "small", 3, torch.float64)
    ids = prompt_ids(3, 11, 7)
    for kept in (1, 2):
        updates = icl.network_update(model, ids, kept_tokens=kept, steering="norm")
        patched = icl.forward_with_updates(model, updates, ids[:, -kept:])
        assert relative_error(patched, _logits(model, ids)) <= TOLERANCE[torch.float64]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("family", NORM)
def test_steering_through_the_norm_scale_in_float32_within_its_conditioning(family, seed):
    """In float32 the scale patch divides by n: a small entry of n amplifies round-off, so the
    error is bounded by the tolerance times the conditioning, not by the tolerance alone."""
    model = build(family, "small", seed, torch.float32)
    ids = prompt_ids(3, 11, seed)
    updates = icl.network_update(model, ids, steering="norm")
    error = relative_error(icl.forward_with_updates(model, updates, ids[:, -1:]), _logits(model, ids))
    assert error <= TOLERANCE[torch.float32] * max(1.0, _norm_condition(updates))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("family", NORM)
def test_steering_through_a_norm_scale_with_zero_entries(family, dtype):
    """A post-MLP norm whose scale has zero entries (Gemma 3 270M's layers 2, 4 and 5 have 1, 1 and
    7): the normalised output n is still defined there (the norm before its scale), so Δs = Δb′ ⊘ n
    is too, and the patched model is as exact as with a scale of no zero entry."""
    model = build(family, "small", 4, dtype)
    offset = icl.families.family_of(model).norm_offset
    norms = [m.post_feedforward_layernorm for m in model.modules() if hasattr(m, "post_feedforward_layernorm")]
    assert norms
    with torch.no_grad():
        for norm in norms:
            norm.weight[:5] = -offset  # the effective scale weight + offset is 0 there
    ids = prompt_ids(3, 11, 4)
    updates = icl.network_update(model, ids, steering="norm")
    error = relative_error(icl.forward_with_updates(model, updates, ids[:, -1:]), _logits(model, ids))
    assert error <= TOLERANCE[dtype] * (1.0 if dtype == torch.float64 else max(1.0, _norm_condition(updates)))


def test_steerings_a_family_cannot_carry_are_refused_with_the_reason():
    ids = prompt_ids(1, 6, 0)
    with pytest.raises(ValueError, match="passes a norm before it is added .use steering='norm'"):
        icl.network_update(build("gemma2", "small", 0, torch.float64), ids, steering="down")
    with pytest.raises(ValueError, match="adds the MLP output as it is .use steering='down'"):
        icl.network_update(build("llama", "small", 0, torch.float64), ids, steering="norm")
    with pytest.raises(ValueError, match="names no single last MLP map"):
        icl.network_update(build("mixtral", "small", 0, torch.float64), ids, steering="down")
    with pytest.raises(ValueError, match=r"steering must be one of \('bias', 'down', 'norm'\)"):
        icl.network_update(build("llama", "small", 0, torch.float64), ids, steering="W_down")
    with pytest.raises(ValueError, match="steering is for transformers language models"):
        icl.network_update(icl.Transformer(4, 1, 8).double(), torch.randn(1, 3, 4, dtype=torch.float64),
                           steering="down")
    model = build("llama", "small", 0, torch.float64)
    updates = icl.network_update(model, ids, steering="down")
    broken = [dataclasses.replace(u, carrier=None) for u in updates]
    with pytest.raises(ValueError, match="has steering 'down' with carrier None"):
        icl.forward_with_updates(model, broken, ids[:, -1:])
