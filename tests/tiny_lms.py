"""Small random-initialised ``transformers`` causal LMs of every supported family (no download).

Each builder takes a size (``"small"`` or ``"wide"``), a seed and a dtype, and returns a model in
eval mode. Sliding windows are shorter than the prompts the tests use, so the sliding layers
really mask; grouped-query attention has fewer key/value heads than query heads.
"""

from __future__ import annotations

import torch
from transformers import (
    MixtralConfig,
    MixtralForCausalLM,
    OlmoeConfig,
    OlmoeForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
    CohereConfig,
    CohereForCausalLM,
    FalconConfig,
    FalconForCausalLM,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    GPTJConfig,
    GPTJForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    GraniteConfig,
    GraniteForCausalLM,
    OlmoConfig,
    OlmoForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PhiConfig,
    PhiForCausalLM,
    SiglipVisionConfig,
    StableLmConfig,
    StableLmForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GemmaConfig,
    GemmaForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers.utils import logging

logging.set_verbosity_error()  # the tiny vocabularies trigger warnings about special-token ids

VOCAB = 97
SIZES = {"small": dict(width=32, hidden=48, layers=2, heads=4, kv=2), "wide": dict(width=64, hidden=96, layers=3, heads=8, kv=2)}


def _common(size: str) -> dict:
    s = SIZES[size]
    return dict(
        vocab_size=VOCAB,
        hidden_size=s["width"],
        intermediate_size=s["hidden"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["kv"],
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def llama(size: str) -> torch.nn.Module:
    return LlamaForCausalLM(LlamaConfig(**_common(size), tie_word_embeddings=True))


def mistral(size: str) -> torch.nn.Module:
    return MistralForCausalLM(MistralConfig(**_common(size), sliding_window=5))


def qwen2(size: str) -> torch.nn.Module:
    layers = SIZES[size]["layers"]
    types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
    config = Qwen2Config(**_common(size), use_sliding_window=True, sliding_window=5, layer_types=types)
    return Qwen2ForCausalLM(config)


def qwen3(size: str) -> torch.nn.Module:
    return Qwen3ForCausalLM(Qwen3Config(**_common(size), head_dim=SIZES[size]["width"] // SIZES[size]["heads"]))


def gemma(size: str) -> torch.nn.Module:
    return GemmaForCausalLM(GemmaConfig(**_common(size), head_dim=SIZES[size]["width"] // SIZES[size]["heads"]))


def gemma2(size: str) -> torch.nn.Module:
    config = Gemma2Config(**_common(size), head_dim=SIZES[size]["width"] // SIZES[size]["heads"], sliding_window=5)
    return Gemma2ForCausalLM(config)


def gemma3(size: str) -> torch.nn.Module:
    layers = SIZES[size]["layers"]
    types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
    config = Gemma3TextConfig(
        **_common(size), head_dim=SIZES[size]["width"] // SIZES[size]["heads"], sliding_window=5, layer_types=types
    )
    return Gemma3ForCausalLM(config)


def gpt2(size: str) -> torch.nn.Module:
    s = SIZES[size]
    config = GPT2Config(
        vocab_size=VOCAB,
        n_embd=s["width"],
        n_inner=s["hidden"],
        n_layer=s["layers"],
        n_head=s["heads"],
        n_positions=128,
        bos_token_id=1,
        eos_token_id=2,
    )
    return GPT2LMHeadModel(config)


def gemma3_multimodal(size: str) -> torch.nn.Module:
    """Gemma 3's image-text class; only its text path runs (no pixels are given)."""
    s = SIZES[size]
    types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(s["layers"])]
    text = Gemma3TextConfig(**_common(size), head_dim=s["width"] // s["heads"], sliding_window=5, layer_types=types)
    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                image_size=28, patch_size=14)
    config = Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4,
                          image_token_index=VOCAB - 1, boi_token_index=VOCAB - 2, eoi_token_index=VOCAB - 3)
    return Gemma3ForConditionalGeneration(config)


def phi3(size: str) -> torch.nn.Module:
    return Phi3ForCausalLM(Phi3Config(**_common(size), sliding_window=5))


def olmo(size: str) -> torch.nn.Module:
    return OlmoForCausalLM(OlmoConfig(**_common(size)))


def olmo2(size: str) -> torch.nn.Module:
    return Olmo2ForCausalLM(Olmo2Config(**_common(size)))


def granite(size: str) -> torch.nn.Module:
    config = GraniteConfig(**_common(size), residual_multiplier=0.6, embedding_multiplier=1.7, attention_multiplier=0.4,
                           logits_scaling=1.3)
    return GraniteForCausalLM(config)


def cohere(size: str) -> torch.nn.Module:
    return CohereForCausalLM(CohereConfig(**_common(size), logit_scale=0.7))


def _no_gqa(size: str) -> dict:
    common = _common(size)
    del common["num_key_value_heads"]
    return common


def gpt_neox(size: str, parallel: bool = True) -> torch.nn.Module:
    config = GPTNeoXConfig(**_no_gqa(size), use_parallel_residual=parallel, rotary_pct=0.5)
    return GPTNeoXForCausalLM(config)


def gpt_neox_sequential(size: str) -> torch.nn.Module:
    return gpt_neox(size, parallel=False)


def stablelm(size: str, parallel: bool = True) -> torch.nn.Module:
    return StableLmForCausalLM(StableLmConfig(**_common(size), use_parallel_residual=parallel, partial_rotary_factor=0.5))


def stablelm_sequential(size: str) -> torch.nn.Module:
    return stablelm(size, parallel=False)


def phi(size: str) -> torch.nn.Module:
    return PhiForCausalLM(PhiConfig(**_common(size), partial_rotary_factor=0.5))


def gptj(size: str) -> torch.nn.Module:
    s = SIZES[size]
    config = GPTJConfig(vocab_size=VOCAB, n_embd=s["width"], n_inner=s["hidden"], n_layer=s["layers"], n_head=s["heads"],
                        rotary_dim=s["width"] // s["heads"] // 2, n_positions=128, bos_token_id=1, eos_token_id=2)
    return GPTJForCausalLM(config)


def falcon(size: str, parallel: bool = True) -> torch.nn.Module:
    s = SIZES[size]
    config = FalconConfig(vocab_size=VOCAB, hidden_size=s["width"], ffn_hidden_size=s["hidden"],
                          num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_kv_heads=s["kv"],
                          new_decoder_architecture=parallel, num_ln_in_parallel_attn=2 if parallel else None,
                          parallel_attn=parallel, bias=True, max_position_embeddings=128, bos_token_id=1, eos_token_id=2)
    return FalconForCausalLM(config)


def falcon_sequential(size: str) -> torch.nn.Module:
    return falcon(size, parallel=False)


def _experts(size: str) -> dict:
    """Four experts, two per token; float64 needs transformers' eager loop over the experts (its
    default grouped matmul has no float64 kernel): the tests run that loop in both dtypes."""
    return dict(num_experts_per_tok=2, experts_implementation="eager")


def mixtral(size: str) -> torch.nn.Module:
    return MixtralForCausalLM(MixtralConfig(**_common(size), **_experts(size), num_local_experts=4, sliding_window=5))


def olmoe(size: str) -> torch.nn.Module:
    return OlmoeForCausalLM(OlmoeConfig(**_common(size), **_experts(size), num_experts=4))


def qwen3_moe(size: str) -> torch.nn.Module:
    s = SIZES[size]
    config = Qwen3MoeConfig(**_common(size), **_experts(size), num_experts=4, moe_intermediate_size=s["hidden"] // 2,
                            head_dim=s["width"] // s["heads"])
    return Qwen3MoeForCausalLM(config)


def qwen2_moe(size: str) -> torch.nn.Module:
    s = SIZES[size]
    config = Qwen2MoeConfig(**_common(size), **_experts(size), num_experts=4, moe_intermediate_size=s["hidden"] // 2,
                            shared_expert_intermediate_size=s["hidden"])
    return Qwen2MoeForCausalLM(config)


BUILDERS = {
    "llama": llama,
    "mistral": mistral,
    "qwen2": qwen2,
    "qwen3": qwen3,
    "gemma": gemma,
    "gemma2": gemma2,
    "gemma3": gemma3,
    "gpt2": gpt2,
    "gemma3_multimodal": gemma3_multimodal,
    "phi3": phi3,
    "olmo": olmo,
    "olmo2": olmo2,
    "granite": granite,
    "cohere": cohere,
    "gpt_neox": gpt_neox,
    "gpt_neox_sequential": gpt_neox_sequential,
    "stablelm": stablelm,
    "stablelm_sequential": stablelm_sequential,
    "phi": phi,
    "gptj": gptj,
    "falcon": falcon,
    "falcon_sequential": falcon_sequential,
    "mixtral": mixtral,
    "olmoe": olmoe,
    "qwen3_moe": qwen3_moe,
    "qwen2_moe": qwen2_moe,
}


def build(family: str, size: str = "small", seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    """A random ``family`` model of the given size, seeded, in ``dtype`` and eval mode.

    The default initialisation of ``transformers`` is small (std 0.02) and zero for the norms'
    weights of Gemma (which use ``1 + w``); the weights are redrawn at std 0.2 so that the
    attention patterns and the MLP nonlinearities are far from trivial.
    """
    torch.manual_seed(seed)
    model = BUILDERS[family](size)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.2)
            elif "norm" in name or "ln_" in name:
                p.uniform_(0.5, 1.5) if not family.startswith("gemma") else p.uniform_(-0.5, 0.5)
            else:
                p.normal_(0.0, 0.1)
    return model.to(dtype).eval()


def prompt_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """Random token ids ``(batch, length)`` in the tiny vocabulary (never the pad id 0)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCAB, (batch, length), generator=generator)
