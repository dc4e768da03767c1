"""Small random-initialised ``transformers`` causal LMs of every supported family (no download).

Each builder takes a size (``"small"`` or ``"wide"``), a seed and a dtype, and returns a model in
eval mode. Sliding windows are shorter than the prompts the tests use, so the sliding layers
really mask; grouped-query attention has fewer key/value heads than query heads.
"""

from __future__ import annotations

import torch
from transformers import (
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


BUILDERS = {
    "llama": llama,
    "mistral": mistral,
    "qwen2": qwen2,
    "qwen3": qwen3,
    "gemma": gemma,
    "gemma2": gemma2,
    "gemma3": gemma3,
    "gpt2": gpt2,
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
                p.uniform_(0.5, 1.5) if family not in ("gemma", "gemma2", "gemma3") else p.uniform_(-0.5, 0.5)
            else:
                p.normal_(0.0, 0.1)
    return model.to(dtype).eval()


def prompt_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """Random token ids ``(batch, length)`` in the tiny vocabulary (never the pad id 0)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCAB, (batch, length), generator=generator)
