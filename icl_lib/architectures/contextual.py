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

Cost: softmax attention runs on PyTorch's fused ``scaled_dot_product_attention`` (``is_causal``
without a mask, a boolean mask of allowed pairs with one); linear attention on running sums over
chunks, with no ``T × T`` matrix; the recurrent layer is a loop over positions, ``O(T)`` (sequential by nature).
"""

from __future__ import annotations

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
        if t == 1:
            # One key: its softmax weight is exactly 1.0, so the output is the value projection,
            # bit for bit what the attention kernel would return (queries and keys are not needed).
            return self.out(self.value(tokens))
        q, k, v = self.heads(tokens)  # scaled by 1/√(D // n_heads) inside the kernel
        if keep is None:
            mixed = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        else:
            allowed = _allowed_pairs(keep, self.causal)  # (B, 1, T, T)
            mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.out(_merge_heads(mixed))


def _allowed_pairs(keep: Tensor, causal: bool) -> Tensor:
    """Which (query position, key position) pairs may interact: (B, 1, T, T) bool.

    A kept position sees the kept positions (earlier ones when ``causal``), never an absent one;
    every position also sees itself, so no row is empty even at absent positions.
    """
    t = keep.shape[1]
    pairs = keep[:, None, None, :] | torch.eye(t, dtype=torch.bool, device=keep.device)
    if causal:
        pairs = pairs & torch.ones(t, t, dtype=torch.bool, device=keep.device).tril()
    return pairs


class LinearAttention(_ProjectedHeads):
    """Causal multi-head linear attention (kernelised attention with feature map elu + 1).

    ``A(z)_t = W_o · concat_heads( Σ_{s≤t} (φ(q_t)·φ(k_s)) v_s / Σ_{s≤t} φ(q_t)·φ(k_s) )``.
    The sums are running sums, so the layer is also an RNN with a matrix-valued state, and that
    is how it is evaluated, chunk by chunk: no ``T × T`` matrix is formed. An absent
    key is left out of the running sums (its features are multiplied by 0); an absent position
    adds its own term, so its normaliser never vanishes.
    For a one-token sequence ``A(x) = W_o (W_v x + b_v) + b_o``, as for softmax attention.

    Shapes: ``forward(tokens (B, T, D), keep (B, T) bool or None) -> (B, T, D)``.
    """

    def __init__(self, dim: int, n_heads: int = 1, bias: bool = True):
        super().__init__(dim, n_heads, bias)

    def forward(self, tokens: Tensor, keep: Tensor | None = None) -> Tensor:
        q, k, v = self.heads(tokens)
        q, k = F.elu(q) + 1, F.elu(k) + 1  # positive features: the normaliser never vanishes
        own = None
        if keep is not None:
            kept = keep[:, None, :, None].to(k.dtype)  # (B, 1, T, 1)
            own = (q * k).sum(-1, keepdim=True) * (1 - kept)  # an absent position's weight on itself
            k = k * kept
        numerator, normaliser = _causal_linear_sums(q, k, v)
        if own is not None:
            numerator, normaliser = numerator + own * v, normaliser + own
        return self.out(_merge_heads(numerator / normaliser))


LINEAR_ATTENTION_CHUNK = 64  # tokens per chunk in _causal_linear_sums


def _causal_linear_sums(q: Tensor, k: Tensor, v: Tensor, chunk: int = LINEAR_ATTENTION_CHUNK) -> tuple[Tensor, Tensor]:
    """``Σ_{s≤t} (q_t·k_s) v_s`` and ``Σ_{s≤t} q_t·k_s`` at every ``t``: ``(B, h, T, d)`` and ``(B, h, T, 1)``.

    The sequence is cut into chunks of ``chunk`` tokens (a shorter sequence is one chunk). Inside a
    chunk the pairs ``s ≤ t`` are summed as a lower-triangular ``chunk × chunk`` product; the earlier
    chunks enter through running sums of ``k_s v_sᵀ`` (``d × d``) and of ``k_s``. Work and memory are
    ``O(T · (chunk + d) · d)`` per head instead of ``O(T² d)``; zero keys contribute exactly nothing.
    """
    b, h, t, d = q.shape
    size = min(chunk, t)
    n = -(-t // size)
    pad = n * size - t
    if pad:  # zero rows: zero keys add nothing, the padded outputs are cut off below
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    q, k, v = (x.reshape(b, h, n, size, d) for x in (q, k, v))
    within = torch.tril(q @ k.transpose(-1, -2))  # (B, h, n, size, size): s ≤ t inside the chunk
    numerator = within @ v
    normaliser = within.sum(-1, keepdim=True)
    if n > 1:
        # Sums over all earlier chunks: exclusive running sums of each chunk's Σ k vᵀ and Σ k.
        states = (k.transpose(-1, -2) @ v).cumsum(2)[:, :, :-1]  # (B, h, n-1, d, d)
        key_sums = k.sum(-2).cumsum(2)[:, :, :-1, :, None]  # (B, h, n-1, d, 1)
        later = q[:, :, 1:]
        numerator[:, :, 1:] += later @ states
        normaliser[:, :, 1:] += later @ key_sums
    numerator = numerator.reshape(b, h, n * size, d)[:, :, :t]
    normaliser = normaliser.reshape(b, h, n * size, 1)[:, :, :t]
    return numerator, normaliser


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
        recurrent = self.recurrent.weight.T  # (S, S): s W_recᵀ is self.recurrent(s), without a module call
        s = tokens.new_zeros(b, self.state)
        states = []
        for i in range(t):
            new = torch.tanh(drive[:, i] + s @ recurrent)
            states.append(new)
            s = new if keep is None else torch.where(keep[:, i, None], new, s)
        return self.out(torch.stack(states, dim=1))
