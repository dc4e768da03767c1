"""Contextual layers: layers that read a query with or without a context.

A contextual layer maps tokens ``(B, T, D)`` to outputs ``(B, T, D)``. Run on the query
alone (``T = 1``) it gives ``A(x)``; run on the whole prompt, its output at the last position
is ``A(C, x)``. Nothing in the theorem of the book depends on what happens inside the layer,
so besides softmax self-attention we provide two layers that mix tokens differently: causal
linear attention and a recurrent layer.

Every layer here accepts an optional ``keep`` mask ``(B, T)``. Tokens with ``keep = False``
are *absent*: at every kept position the output equals the output the layer would give on the
shorter sequence with the absent tokens removed. The outputs at absent positions are
meaningless but finite. This is how a batch of prompts with different absorbed subsets
``Y`` (the theorem's partial contexts) runs in one call.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["SelfAttention", "LinearAttention", "RecurrentLayer"]


def _split_heads(x: Tensor, n_heads: int) -> Tensor:
    """(B, T, D) -> (B, n_heads, T, D // n_heads)."""
    b, t, d = x.shape
    return x.view(b, t, n_heads, d // n_heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    """(B, n_heads, T, Dh) -> (B, T, n_heads * Dh)."""
    b, h, t, dh = x.shape
    return x.transpose(1, 2).reshape(b, t, h * dh)


def _check_heads(dim: int, n_heads: int) -> None:
    if dim < 1 or n_heads < 1:
        raise ValueError(f"dim and n_heads must be positive, got dim={dim}, n_heads={n_heads}")
    if dim % n_heads:
        raise ValueError(f"dim={dim} is not divisible by n_heads={n_heads}")


class _ProjectedHeads(nn.Module):
    """The four projections shared by both attention layers: query, key, value, output."""

    def __init__(self, dim: int, n_heads: int, bias: bool):
        super().__init__()
        _check_heads(dim, n_heads)
        self.dim, self.n_heads = dim, n_heads
        self.query = nn.Linear(dim, dim, bias=bias)
        self.key = nn.Linear(dim, dim, bias=bias)
        self.value = nn.Linear(dim, dim, bias=bias)
        self.out = nn.Linear(dim, dim, bias=bias)

    def heads(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys, values split into heads: three ``(B, n_heads, T, D // n_heads)``."""
        return tuple(_split_heads(proj(tokens), self.n_heads) for proj in (self.query, self.key, self.value))


class SelfAttention(_ProjectedHeads):
    """Multi-head softmax self-attention, the paper's contextual layer.

    ``A(z)_t = W_o · concat_heads( Σ_s softmax_s(q_t·k_s / √d_h) v_s )``, with ``s ≤ t``
    when ``causal``. For a one-token sequence the softmax is 1 and ``A(x) = W_o (W_v x + b_v) + b_o``.

    Args:
        dim: token width D.
        n_heads: number of heads; must divide ``dim``.
        causal: each position attends only to itself and earlier positions.
        bias: learn biases in the four projections.

    Shapes: ``forward(tokens (B, T, D), keep (B, T) bool or None) -> (B, T, D)``.
    """

    def __init__(self, dim: int, n_heads: int = 1, causal: bool = True, bias: bool = True):
        super().__init__(dim, n_heads, bias)
        self.causal = causal

    def forward(self, tokens: Tensor, keep: Tensor | None = None) -> Tensor:
        t = tokens.shape[1]
        q, k, v = self.heads(tokens)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.dim // self.n_heads)  # (B, h, T, T)
        allowed = _allowed_pairs(t, self.causal, keep, tokens.device)  # (B or 1, 1, T, T)
        scores = scores.masked_fill(~allowed, float("-inf"))
        mixed = torch.softmax(scores, dim=-1) @ v
        return self.out(_merge_heads(mixed))


def _allowed_pairs(t: int, causal: bool, keep: Tensor | None, device: torch.device) -> Tensor:
    """Which (query position, key position) pairs may interact: (B or 1, 1, T, T) bool.

    A position always sees itself, so no row is empty even at absent positions; a kept
    position never sees an absent one.
    """
    pairs = torch.ones(t, t, dtype=torch.bool, device=device)
    if causal:
        pairs = torch.tril(pairs)
    pairs = pairs[None, None]
    if keep is not None:
        diagonal = torch.eye(t, dtype=torch.bool, device=device)
        pairs = pairs & (keep[:, None, None, :] | diagonal)
    return pairs


class LinearAttention(_ProjectedHeads):
    """Causal multi-head linear attention (kernelised attention with feature map elu + 1).

    ``A(z)_t = W_o · concat_heads( Σ_{s≤t} (φ(q_t)·φ(k_s)) v_s / Σ_{s≤t} φ(q_t)·φ(k_s) )``.
    The sums are running sums, so the layer is also an RNN with a matrix-valued state; here it
    is evaluated in its quadratic (masked matrix) form, which handles absent tokens like softmax.
    For a one-token sequence ``A(x) = W_o (W_v x + b_v) + b_o``, as for softmax attention.

    Shapes: ``forward(tokens (B, T, D), keep (B, T) bool or None) -> (B, T, D)``.
    """

    def __init__(self, dim: int, n_heads: int = 1, bias: bool = True):
        super().__init__(dim, n_heads, bias)

    def forward(self, tokens: Tensor, keep: Tensor | None = None) -> Tensor:
        t = tokens.shape[1]
        q, k, v = self.heads(tokens)
        q, k = F.elu(q) + 1, F.elu(k) + 1  # positive features: the normaliser never vanishes
        weights = q @ k.transpose(-1, -2)  # (B, h, T, T), all positive
        weights = weights * _allowed_pairs(t, True, keep, tokens.device).to(weights.dtype)
        mixed = (weights @ v) / weights.sum(-1, keepdim=True)
        return self.out(_merge_heads(mixed))


class RecurrentLayer(nn.Module):
    """An Elman recurrent layer used as a contextual layer.

    ``s_t = tanh(W_in z_t + W_rec s_{t-1} + b)``, ``s_0 = 0``, ``A(z)_t = W_o s_t + b_o``.
    For a one-token sequence ``A(x) = W_o tanh(W_in x + b) + b_o``. Absent tokens do not
    change the state.

    Args:
        dim: token width D.
        state: width of the hidden state (default ``dim``).

    Shapes: ``forward(tokens (B, T, D), keep (B, T) bool or None) -> (B, T, D)``.
    """

    def __init__(self, dim: int, state: int | None = None):
        super().__init__()
        state = dim if state is None else state
        if dim < 1 or state < 1:
            raise ValueError(f"dim and state must be positive, got dim={dim}, state={state}")
        self.dim, self.state = dim, state
        self.input = nn.Linear(dim, state)
        self.recurrent = nn.Linear(state, state, bias=False)
        self.out = nn.Linear(state, dim)

    def forward(self, tokens: Tensor, keep: Tensor | None = None) -> Tensor:
        b, t, _ = tokens.shape
        drive = self.input(tokens)  # (B, T, S)
        s = tokens.new_zeros(b, self.state)
        states = []
        for i in range(t):
            new = torch.tanh(drive[:, i] + self.recurrent(s))
            states.append(new)
            s = new if keep is None else torch.where(keep[:, i, None], new, s)
        return self.out(torch.stack(states, dim=1))
