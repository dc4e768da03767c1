"""Implicit learning dynamics: absorbing the context one token at a time (Dherin et al., 2025).

With ``A_i = A(c_1..c_i, x)`` (the block run on the truncated prompt ``[c_1..c_i, x]``) and
``A_0 = A(x)``, the weights ``W_i = W + W (A_i − A_0) A_0ᵀ / ‖A_0‖²`` satisfy
``T_{W_i}(x) = T_W(c_1..c_i, x)`` and

    W_{i+1} = W_i − h ∇_W L_i(W_i),   h = 1/‖A_0‖²,   L_i(W) = trace(Δ_iᵀ W),
    Δ_i = W (A_i − A_{i+1}) A_0ᵀ.

For residual blocks ``A`` stands for the MLP input (``h`` or ``LN₂ h``) and each step also
shifts ``b′``; the weight dynamics are the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .implicit import ImplicitUpdate, _check_block_tokens, check_reference

__all__ = ["ImplicitTrajectory", "implicit_trajectory"]

# Upper bound on B·k·T·T (attention scores) when k truncated prompts run in one batch.
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class ImplicitTrajectory:
    """The token-by-token updates ``ΔW_i = W_i − W`` for ``i = 0..N``.

    Attributes:
        update: stacked :class:`ImplicitUpdate`: ``u (B, N+1, H)`` with entry ``i`` the update
            after absorbing ``c_1..c_i`` (entry 0 is zero), ``v = A(x) (B, D)``, ``delta_b``.
        weight: the block's ``W (H, D)`` (``W_0``).
    """

    update: ImplicitUpdate
    weight: Tensor

    @property
    def n_context(self) -> int:
        """``N``, the number of context tokens."""
        return self.update.u.shape[1] - 1

    @property
    def learning_rate(self) -> Tensor:
        """``h = 1/‖A(x)‖²``, ``(B,)``."""
        return self.update.learning_rate

    def _check_step(self, i: int, last: int) -> None:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i <= last:
            raise ValueError(f"step index must be an int in [0, {last}], got {i!r}")

    def weights(self, i: int) -> Tensor:
        """``W_i = W + ΔW_i``, ``(B, H, D)``, for ``i = 0..N``."""
        self._check_step(i, self.n_context)
        u = self.update.u[:, i]
        return self.weight + u[:, :, None] * (self.update.v * self.learning_rate[:, None])[:, None, :]

    def gradient(self, i: int) -> Tensor:
        """``Δ_i = ∇_W L_i = W (A_i − A_{i+1}) A(x)ᵀ``, ``(B, H, D)``, for ``i = 0..N-1``."""
        self._check_step(i, self.n_context - 1)
        du = self.update.u[:, i] - self.update.u[:, i + 1]
        return du[:, :, None] * self.update.v[:, None, :]

    def loss(self, i: int, weight: Tensor) -> Tensor:
        """``L_i(W) = trace(Δ_iᵀ W)`` for ``W (H, D)`` or ``(B, H, D)``; returns ``(B,)``."""
        return (self.gradient(i) * weight).sum(dim=(-2, -1))

    def increment_norms(self) -> Tensor:
        """``‖W_{i+1} − W_i‖_F`` for ``i = 0..N-1``, ``(B, N)``, without forming any matrix."""
        du = self.update.u[:, 1:] - self.update.u[:, :-1]
        return du.norm(dim=-1) / self.update.v.norm(dim=-1)[:, None]


def _prefix_keep(n_context: int, device: torch.device) -> Tensor:
    """``(N+1, N+1)`` keep masks: row ``i`` keeps ``c_1..c_i`` and the query."""
    steps = torch.arange(n_context + 1, device=device)
    context = steps[None, :n_context] < steps[:, None]
    return torch.cat([context, torch.ones(n_context + 1, 1, dtype=torch.bool, device=device)], dim=1)


def implicit_trajectory(block: nn.Module, tokens: Tensor) -> ImplicitTrajectory:
    """The implicit updates after absorbing ``c_1..c_i``, for every ``i = 0..N``.

    Each truncated prompt ``[c_1..c_i, x]`` is a separate run of the block (through the layers'
    ``keep`` masks, batched in chunks), not position ``i`` of the full prompt.

    Args:
        block: an :class:`icl_lib.Block` or a ``torch.nn.TransformerEncoderLayer``.
        tokens: ``(B, T, D)``, ``T = N + 1 ≥ 2``.
    """
    view, _, tokens = _check_block_tokens(block, tokens, "tokens", min_length=2)
    b, t, d = tokens.shape
    keep = _prefix_keep(t - 1, tokens.device)
    chunk = max(1, _CHUNK_ELEMENTS // (b * t * t))
    m_steps, h_steps = [], []
    for start in range(0, t, chunk):
        rows = keep[start : start + chunk]
        k = rows.shape[0]
        m, h = view.stream(
            tokens[:, None].expand(b, k, t, d).reshape(b * k, t, d), rows[None].expand(b, k, t).reshape(b * k, t)
        )
        m_steps.append(m[:, -1].view(b, k, d))
        if h is not None:
            h_steps.append(h[:, -1].view(b, k, d))
    m_steps = torch.cat(m_steps, dim=1)  # (B, N+1, D): A_i; A_0 = A(x), so ΔW_0 is exactly zero
    a = check_reference(m_steps[:, 0])
    pre = view.first(m_steps)  # W A_i + b
    u = pre - pre[:, :1]  # W (A_i − A_0), as in icl_lib.implicit_update
    shift = None
    if h_steps:
        h_steps = torch.cat(h_steps, dim=1)
        shift = h_steps - h_steps[:, :1]
    update = ImplicitUpdate(u=u, v=a, delta_b=shift, position=t - 1, n_tokens=t)
    return ImplicitTrajectory(update=update, weight=view.first.weight)
