"""What the exact patches of a large model cost in memory, counted from its configuration.

A 7-8B model cannot run on the project's machine, but what the library stores for it follows
from its shapes alone. :func:`memory_plan` builds the model on PyTorch's ``meta`` device (no
weights are allocated, nothing is downloaded: a ``transformers`` config written out by hand is
enough), reads its decoder layers through the same family records as the patches do, and counts:

* the weights, in the dtype the model would be loaded in;
* the factors :func:`icl_lib.network_update` returns: per layer ``u (B, H_s)`` (``H_s`` the
  width of every map that reads the MLP input: gate and up, a router and all its experts),
  ``v (B, D)``, ``Δb′ (B, D)`` and, for a mixture of experts, ``δ (B, D)``, stored in ``factor_dtype`` (float32 for a half-precision
  model), for the query, for every position, and for ``implicit_trajectory`` at every length;
* the key-value cache of one forward pass of ``T`` tokens;
* the attention mask the one-pass trajectory writes (a boolean ``(T_run, T_run)`` per batch row,
  ``T_run = T_context + S·K``): it cannot use a fused kernel's implicit causal mask.

The counts are exact for the stored tensors (a test checks them against tiny models); what a
run allocates besides them (activations, kernels' workspaces) depends on the device and is not
counted here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["MemoryPlan", "memory_plan"]

_GIB = 2**30


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes of what a model and its patches store (see :func:`memory_plan`).

    Attributes:
        parameters: number of parameters.
        weights: bytes of the weights in the load dtype.
        layers: number of decoder layers ``L``.
        factor_width: the numbers one patch of every layer holds: ``H_s + 2 D`` summed over
            layers (``+ D`` more for a layer patched at its input, which keeps ``δ``).
        query: bytes of the factors of one query update (batch ``B``).
        every_position: bytes of the factors of ``position="all"`` on ``T`` tokens.
        trajectory: bytes of the factors of ``implicit_trajectory`` at every length ``0..T−1``.
        kv_cache: bytes of the keys and values of ``T`` tokens in the load dtype.
        trajectory_mask: bytes of the one-pass trajectory's boolean attention mask.
    """

    parameters: int
    weights: int
    layers: int
    factor_width: int
    query: int
    every_position: int
    trajectory: int
    kv_cache: int
    trajectory_mask: int

    def summary(self) -> str:
        """One line per figure, in GiB."""
        rows = [("weights", self.weights), ("factors, query", self.query),
                ("factors, every position", self.every_position), ("factors, trajectory", self.trajectory),
                ("key-value cache", self.kv_cache), ("trajectory mask", self.trajectory_mask)]
        lines = [f"{self.parameters / 1e9:.2f} B parameters, {self.layers} layers"]
        lines += [f"{name:24} {size / _GIB:9.3f} GiB" for name, size in rows]
        return "\n".join(lines)


def _meta_model(config) -> nn.Module:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return model.eval()


def memory_plan(
    config,
    n_tokens: int,
    *,
    batch: int = 1,
    dtype: torch.dtype = torch.bfloat16,
    factor_dtype: torch.dtype = torch.float32,
    kept_tokens: int = 1,
) -> MemoryPlan:
    """Count what a model of this ``transformers`` config and its patches store for ``T`` tokens.

    Args:
        config: a ``transformers`` ``PretrainedConfig`` of a causal LM of a supported family.
        n_tokens: the prompt length ``T``.
        batch: the number of prompts ``B``.
        dtype: the dtype the weights and the key-value cache are held in.
        factor_dtype: the dtype of the factors (the library's default for half models is float32).
        kept_tokens: ``K``, the tokens of the query line (each gets its own patch).

    Raises:
        ValueError: if ``n_tokens`` or ``batch`` is not a positive int, or ``kept_tokens`` is not
            an int in ``[1, T − 1]``.
    """
    from ..architectures.causal_lm import _language_model

    for name, value in (("n_tokens", n_tokens), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if isinstance(kept_tokens, bool) or not isinstance(kept_tokens, int) or not 1 <= kept_tokens < n_tokens:
        raise ValueError(f"kept_tokens must be an int in [1, {n_tokens - 1}], got {kept_tokens!r}")
    model = _meta_model(config)
    lm = _language_model(model)
    parameters = sum(p.numel() for p in model.parameters())
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    width = text.hidden_size
    # per layer: u (H_s), v (D), Δb′ (D), and δ (D) where the layer is patched at its input
    per_patch = sum(site.first.out_features + (2 if site.first.hookable else 3) * width for site in lm.sites)
    shared = len(lm.sites) * width  # every position shares one v per layer
    head_dim = getattr(text, "head_dim", None) or width // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    item, factor_item = torch.finfo(dtype).bits // 8, torch.finfo(factor_dtype).bits // 8
    steps = n_tokens - kept_tokens + 1  # context lengths 0..N
    run = (n_tokens - kept_tokens) + steps * kept_tokens
    return MemoryPlan(
        parameters=parameters,
        weights=parameters * item,
        layers=len(lm.sites),
        factor_width=per_patch,
        query=batch * kept_tokens * per_patch * factor_item,
        every_position=batch * (n_tokens * (per_patch - shared) + shared) * factor_item,
        trajectory=batch * steps * kept_tokens * per_patch * factor_item,
        kv_cache=batch * n_tokens * len(lm.sites) * 2 * kv_heads * head_dim * item,
        trajectory_mask=batch * run * run,
    )


def large_model_configs() -> dict[str, object]:
    """The configurations of three public 7-8B models, written out from their published
    ``config.json`` (the shapes only; no weights): Llama 3.1 8B, Qwen2.5 7B and Mistral 7B v0.1."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    return {
        "Llama-3.1-8B": LlamaConfig(
            hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
            num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
        "Qwen2.5-7B": Qwen2Config(
            hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
            num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
        "Mistral-7B-v0.1": MistralConfig(
            hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
            num_key_value_heads=8, vocab_size=32000, sliding_window=4096, tie_word_embeddings=False),
    }


def main(lengths: tuple[int, ...] = (512, 4096)) -> None:
    """Print the memory plan of each of :func:`large_model_configs` in bfloat16, B = 1."""
    print("memory of the weights (bfloat16) and of the float32 factors the library stores, B = 1, GiB")
    print(f"{'model':16} {'params':>7} {'T':>5} {'weights':>8} {'query':>7} {'every pos':>10} "
          f"{'trajectory':>11} {'KV cache':>9} {'traj mask':>10}")
    for name, config in large_model_configs().items():
        for t in lengths:
            plan = memory_plan(config, t)
            sizes = (plan.weights, plan.query, plan.every_position, plan.trajectory, plan.kv_cache,
                     plan.trajectory_mask)
            print(f"{name:16} {plan.parameters / 1e9:6.2f}B {t:5d} "
                  + " ".join(f"{size / _GIB:{w}.3f}" for size, w in zip(sizes, (8, 7, 10, 11, 9, 10))))


if __name__ == "__main__":
    main()
