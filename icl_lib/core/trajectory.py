"""Implicit learning dynamics: absorbing the context one token at a time (Dherin et al., 2025).

With ``A_i = A(c_1..c_i, x)`` (the block run on the truncated prompt ``[c_1..c_i, x]``) and
``A_0 = A(x)``, the weights ``W_i = W + W (A_i − A_0) A_0ᵀ / ‖A_0‖²`` satisfy
``T_{W_i}(x) = T_W(c_1..c_i, x)`` and

    W_{i+1} = W_i − h ∇_W L_i(W_i),   h = 1/‖A_0‖²,   L_i(W) = trace(Δ_iᵀ W),
    Δ_i = W (A_i − A_{i+1}) A_0ᵀ.

For residual blocks ``A`` stands for the MLP input (``h`` or ``LN₂ h``) and each step also
shifts ``b′``; the weight dynamics are the same.

For a ``transformers`` causal LM the trajectory is the model's: step ``i`` is the truncated
prompt ``[c_1..c_i, x]`` run through the whole model, and every decoder layer gets its patch
(:class:`NetworkTrajectory`). Layer ``ℓ ≥ 1`` then sees, at the query, an input that itself
depends on ``i``, so its reference ``a`` (``v``) changes from step to step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .architecture import find_view, network_of
from .implicit import _check_block_tokens
from .update import ImplicitUpdate, check_reference

__all__ = ["ImplicitTrajectory", "NetworkTrajectory", "implicit_trajectory"]

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


@dataclass(frozen=True)
class NetworkTrajectory:
    """The patches of every decoder layer of a language model as the context grows.

    Attributes:
        updates: ``updates[s][ℓ]``, the :class:`ImplicitUpdate` of layer ``ℓ`` (batch ``B``) for
            the prompts truncated to their first ``context_lengths[s]`` context tokens.
        context_lengths: the ``S`` context lengths ``i`` (0: the query alone, zero patches).
        logits: the model's own logits at the query of every truncated prompt, ``(B, S, vocab)``;
            ``None`` when :func:`implicit_trajectory` was called with ``logits=False``.
    """

    updates: tuple[tuple[ImplicitUpdate, ...], ...]
    context_lengths: tuple[int, ...]
    logits: Tensor | None

    @property
    def n_steps(self) -> int:
        """``S``, the number of context lengths."""
        return len(self.context_lengths)

    def at(self, step: int) -> list[ImplicitUpdate]:
        """The updates of every layer at ``context_lengths[step]``: they feed
        :func:`icl_lib.forward_with_updates` with the query alone."""
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < self.n_steps:
            raise ValueError(f"step must be an int in [0, {self.n_steps - 1}], got {step!r}")
        return list(self.updates[step])

    def frobenius_norms(self) -> Tensor:
        """``‖ΔW_i‖_F`` of every layer at every step, ``(B, L, S)`` (``(B, L, K, S)`` with ``K`` kept tokens)."""
        return torch.stack([torch.stack([u.frobenius_norm() for u in step], dim=1) for step in self.updates], dim=-1)

    def increment_norms(self) -> Tensor:
        """``‖ΔW_{s+1} − ΔW_s‖_F`` of every layer between consecutive steps, ``(B, L, S−1)``
        (``(B, L, K, S−1)`` with ``K`` kept tokens).

        With ``ΔW = u wᵀ`` (``w = v/‖v‖²``) the difference is ``(u′ − u) w′ᵀ + u (w′ − w)ᵀ``: its
        squared norm is summed from these two small terms, never as a difference of two large
        norms (layer 0's ``v`` is the same at every step, so there it is ``‖u′ − u‖/‖v‖``).
        """
        steps = []
        for before, after in zip(self.updates[:-1], self.updates[1:]):
            layers = []
            for old, new in zip(before, after):
                w0, w1 = old.v * old.learning_rate[..., None], new.v * new.learning_rate[..., None]
                du, dw = new.u - old.u, w1 - w0
                squared = (
                    (du * du).sum(-1) * (w1 * w1).sum(-1)
                    + (old.u * old.u).sum(-1) * (dw * dw).sum(-1)
                    + 2 * (du * old.u).sum(-1) * (w1 * dw).sum(-1)
                )
                layers.append(squared.clamp(min=0).sqrt())
            steps.append(torch.stack(layers, dim=1))
        return torch.stack(steps, dim=-1)


def implicit_trajectory(
    block: nn.Module,
    tokens: Tensor,
    *,
    attention_mask: Tensor | None = None,
    context_lengths: Sequence[int] | None = None,
    kept_tokens: int = 1,
    logits: bool = True,
) -> ImplicitTrajectory | NetworkTrajectory:
    """The implicit updates after absorbing ``c_1..c_i``, for every ``i = 0..N``.

    Each truncated prompt ``[c_1..c_i, x]`` is a separate run of the block (through the layers'
    ``keep`` masks, batched in chunks), not position ``i`` of the full prompt.

    Args:
        block: an :class:`icl_lib.Block` or a ``torch.nn.TransformerEncoderLayer``; or a
            ``transformers`` causal LM, which gives a :class:`NetworkTrajectory`.
        tokens: ``(B, T, D)``, ``T = N + 1 ≥ 2``; token ids ``(B, T)`` for a language model.
        attention_mask: language models only: ``(B, T)``, 0 for left padding.
        context_lengths: language models only: the context lengths ``i`` to run (default every
            ``i = 0..N`` of the shortest prompt), e.g. the token counts at example boundaries.
        kept_tokens: language models only: the query ``x`` is the last ``K`` tokens (e.g. a whole
            query line); every one of them gets its own patch (see :func:`icl_lib.network_update`).
        logits: language models only: also return the model's logits at the query of every
            truncated prompt (``NetworkTrajectory.logits``). ``False`` skips the language-model
            head, whose ``S × vocab`` outputs are a large part of the cost of a long prompt.
    """
    if find_view(block) is None:  # a whole model: its architecture runs the truncated prompts
        return network_of(block).trajectory(tokens, attention_mask, context_lengths, kept_tokens, logits)
    if attention_mask is not None or context_lengths is not None or kept_tokens != 1 or logits is not True:
        raise ValueError(
            "attention_mask, context_lengths, kept_tokens and logits are for transformers language models only")
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
