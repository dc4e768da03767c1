"""Unnormalised linear self-attention, and its weights that take one gradient step.

The layer of von Oswald et al. (2023, "Transformers learn in-context by gradient descent") and
Ahn et al. (2023): attention without softmax and without a normaliser, with the residual
connection inside the layer,

    A(z)_t = z_t + (1/N) Σ_{s≤t} W_v z_s (z_sᵀ W_kᵀ W_q z_t),

where ``N`` is a fixed number (the context length the layer is built for), not the number of
tokens read so far. Causal, so ``A(x) = x + (1/N) W_v x (xᵀ W_kᵀ W_q x)`` on the query alone.

:func:`gd_linear_attention` sets the weights so that, on regression tokens ``z_j = (x_j, y_j)``
and the query ``(x_q, 0)``, the layer's output at the query is ``(x_q, ⟨w₁, x_q⟩)``, with
``w₁ = (ν/N) Σ_j y_j x_j`` the weights after one gradient step of rate ``ν`` from ``w = 0`` on
``L(w) = 1/(2N) Σ_j (⟨w, x_j⟩ − y_j)²`` (see :func:`icl_lib.gd_step`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["LinearSelfAttention", "gd_linear_attention"]


class LinearSelfAttention(nn.Module):
    """Causal linear self-attention with no normaliser and the residual inside the layer.

    ``A(z)_t = z_t + (1/N) Σ_{s≤t} W_v z_s (z_sᵀ W_kᵀ W_q z_t)``, one head of width ``dim``,
    no biases. Absent tokens (``keep = False``) are left out of the sums, so every kept
    position's output is the layer's output on the shorter sequence (``N`` stays fixed).

    Args:
        dim: token width D.
        n_context: ``N``, the fixed scale ``1/N`` of the sum.

    Shapes: ``forward(tokens (B, T, D), keep (B, T) bool or None) -> (B, T, D)``.
    """

    def __init__(self, dim: int, n_context: int):
        super().__init__()
        if dim < 1 or n_context < 1:
            raise ValueError(f"dim and n_context must be positive, got dim={dim}, n_context={n_context}")
        self.dim, self.n_context = dim, n_context
        self.query = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)

    def forward(self, tokens: Tensor, keep: Tensor | None = None) -> Tensor:
        if not isinstance(tokens, Tensor) or tokens.ndim != 3 or tokens.shape[-1] != self.dim:
            got = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must have shape (B, T, {self.dim}), got {got}")
        t = tokens.shape[1]
        q, k, v = self.query(tokens), self.key(tokens), self.value(tokens)
        scores = q @ k.transpose(-1, -2)  # (B, T, T): entry (t, s) is q_t · k_s
        allowed = torch.ones(t, t, dtype=torch.bool, device=tokens.device).tril()
        if keep is not None:
            if keep.shape != tokens.shape[:2] or keep.dtype != torch.bool:
                raise ValueError(f"keep must be a bool tensor of shape {tuple(tokens.shape[:2])}")
            allowed = allowed & keep[:, None, :]  # absent keys add nothing
        scores = scores * allowed.to(scores.dtype)
        return tokens + (scores @ v) / self.n_context


def gd_linear_attention(d: int, lr: float, n_context: int, dtype: torch.dtype = torch.float64) -> LinearSelfAttention:
    """The layer whose output at the query is the prediction after one gradient step from ``w = 0``.

    Tokens have width ``D = d + 1``. With ``P = [[I_d, 0], [0, 0]]`` (the projection on the
    inputs) and ``e = e_D`` (the label coordinate): ``W_q = W_k = P`` and ``W_v = ν e eᵀ``. Then
    ``q_t · k_s = ⟨x_t, x_s⟩`` and ``W_v z_s = ν y_s e``; the query's own value is 0 (its label is
    0), so ``A(C, x)_q = (x_q, (ν/N) Σ_j y_j ⟨x_j, x_q⟩) = (x_q, ⟨w₁, x_q⟩)``, and ``A(x) = (x_q, 0)``.

    Args:
        d: input dimension (``d ≥ 1``).
        lr: the step size ``ν`` (finite).
        n_context: ``N``, the number of context examples the step averages over.
        dtype: of the weights.
    """
    if d < 1:
        raise ValueError(f"d must be at least 1, got {d}")
    lr = float(lr)
    if not torch.isfinite(torch.tensor(lr)):
        raise ValueError(f"lr must be finite, got {lr}")
    layer = LinearSelfAttention(d + 1, n_context).to(dtype)
    inputs = torch.zeros(d + 1, d + 1, dtype=dtype)
    inputs[:d, :d] = torch.eye(d, dtype=dtype)
    label = torch.zeros(d + 1, d + 1, dtype=dtype)
    label[d, d] = lr
    with torch.no_grad():
        layer.query.weight.copy_(inputs)
        layer.key.weight.copy_(inputs)
        layer.value.weight.copy_(label)
    return layer
