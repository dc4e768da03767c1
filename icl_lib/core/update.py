"""The object the theorem produces: a factored rank-1 patch of a block's first MLP layer.

Notation (Dherin et al., 2025; for residual blocks, Innocenti & Achour, 2025). A block's MLP
input at a position is ``m``, its first MLP layer ``W (H, D)`` (for a gated MLP the stack
``W_s = [W_gate; W_up]``). With ``a`` the MLP input at the query when the absorbed tokens are
absent, and ``m_p`` the MLP input at position ``p`` of the full prompt,

    ΔW = (W δ) aᵀ / ‖a‖²,   δ = m_p − a,         Δb′ = h_p − h_a (residual blocks only),

and the block run on the kept tokens with ``W + ΔW`` (and ``b′ + Δb′``) gives, at the query,
exactly the prompted output at position ``p``. We store the two factors ``u = W δ`` and
``v = a``; the dense ``ΔW`` exists only if :attr:`ImplicitUpdate.delta_W` is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .checks import check_rows

__all__ = ["ImplicitUpdate", "LowRankPatch", "Patch", "check_reference"]


@dataclass(frozen=True)
class ImplicitUpdate:
    """A factored rank-1 update ``ΔW = u vᵀ / ‖v‖²`` of the first MLP weight, plus ``Δb′``.

    Attributes:
        u: ``W δ``, shape ``(B, H)``, or ``(B, P, H)`` for a stack of ``P`` updates sharing ``v``
            (every position of a prompt, or every step of a trajectory).
        v: ``a``, the MLP input at the query without the absorbed tokens, ``(B, D)``; or
            ``(B, P, D)``, one per update, when a language model keeps several tokens
            (``network_update(..., kept_tokens=P)``: each kept token has its own reference).
        delta_b: the shift of the MLP output bias ``b′``, ``(B, D_out)`` or ``(B, P, D_out)``;
            ``None`` for a block without residual connection.
        position: the prompt position whose output the patch reproduces (non-negative), or
            ``None`` when ``u`` holds one update per position.
        n_tokens: ``T``, the length of the prompt the update was computed from.
        position_ids: for a ``transformers`` causal LM, the position id of each prompt's query,
            ``(B,)`` long (with left padding it differs from ``T − 1``): a model with learned
            absolute positions (GPT-2) embeds the query alone there. ``None`` for the library's
            own blocks, whose tokens carry no position id.
        delta: ``δ = m_p − a``, the change of the MLP input, shaped like ``v`` (or like ``u``
            with ``D`` columns when ``u`` is stacked over positions), kept only for a layer
            whose first-layer maps are bare weights (a mixture of experts): that layer is
            patched at its MLP input, ``m ↦ m + δ (vᵀm)/‖v‖²``, the same map as
            ``W_s + ΔW_s`` on every map that reads ``m``. ``None`` otherwise.
        steering: how ``Δb′`` enters the patched run: ``"bias"``, added to the MLP output (a
            shift of its output bias ``b′``, or a vector added where there is none);
            ``"down"``, as the rank-1 update ``ΔW_down = Δb′ cᵀ/‖c‖²`` of the MLP's last weight;
            ``"norm"``, as the patch ``Δs = Δb′ ⊘ n`` of the scale ``s`` of the norm that scales
            the normalised MLP output ``n`` (``out = s ⊙ n``; Goldwaser et al., 2025). Language
            models only (``network_update(..., steering=...)``).
        carrier: ``c``, shaped like ``delta_b`` with the carrier's width: for ``"down"`` the
            MLP's hidden activation (the input of ``W_down``) at the reproduced position(s), for
            ``"norm"`` the normalised MLP output ``n`` there (so ``Δs = Δb′ ⊘ c``); ``None`` for
            ``"bias"``.
    """

    u: Tensor
    v: Tensor
    delta_b: Tensor | None
    position: int | None
    n_tokens: int
    position_ids: Tensor | None = None
    delta: Tensor | None = None
    steering: str = "bias"
    carrier: Tensor | None = None

    @property
    def stacked(self) -> bool:
        """Whether ``u`` carries a leading axis of several updates, ``(B, P, H)``."""
        return self.u.ndim == 3

    @property
    def learning_rate(self) -> Tensor:
        """``h = 1 / ‖a‖²``, shape ``(B,)`` (``(B, P)`` when every update has its own ``v``)."""
        return 1.0 / (self.v * self.v).sum(-1)

    def _broadcast(self, x: Tensor) -> Tensor:
        """``x (B, ...)`` of the shared ``v`` given a position axis when ``u`` is stacked over a shared ``v``."""
        return x[:, None] if self.stacked and self.v.ndim == 2 else x

    @property
    def delta_W(self) -> Tensor:
        """The dense update, ``(B, H, D)`` or ``(B, P, H, D)``. Materialised on every call."""
        scaled_v = self._broadcast(self.v * self.learning_rate[..., None])  # (B, D) or (B, P, D)
        return self.u[..., :, None] * scaled_v[..., None, :]

    def frobenius_norm(self) -> Tensor:
        """``‖ΔW‖_F = ‖W δ‖ / ‖a‖`` without forming ΔW; ``(B,)`` or ``(B, P)``."""
        return self.u.norm(dim=-1) / self._broadcast(self.v.norm(dim=-1))

    def rows(self, index: Tensor) -> ImplicitUpdate:
        """The update of the prompts ``index`` (a 1-d integer tensor of batch rows)."""
        index = check_rows(index, "batch rows")

        def pick(x: Tensor | None) -> Tensor | None:
            return None if x is None else x[index]

        return replace(self, u=self.u[index], v=self.v[index], delta_b=pick(self.delta_b),
                       position_ids=pick(self.position_ids), delta=pick(self.delta), carrier=pick(self.carrier))


def check_reference(a: Tensor) -> Tensor:
    """Refuse a zero reference ``a (B, D)``: the theorem divides by ‖a‖².

    Exactly zero is refused, and so is an ``a`` whose squared norm underflows below the
    smallest normal number of its dtype (or overflows): ``1/‖a‖²`` would be inf and the
    patched output NaN.
    """
    squared = (a * a).sum(-1)
    finfo = torch.finfo(a.dtype)
    if bool(((squared >= finfo.tiny) & (squared <= finfo.max)).all()):  # the usual case: one test
        return a
    zero = (a == 0).all(dim=-1)
    if zero.any():
        rows = zero.nonzero().flatten().tolist()
        raise ValueError(
            f"the MLP input at the query without the absorbed context, A(x), is exactly zero for batch "
            f"element(s) {rows}: ΔW = W δ aᵀ/‖a‖² is undefined there (no epsilon is added)"
        )
    unusable = ~torch.isfinite(squared) | (squared < finfo.tiny)
    if unusable.any():
        rows = unusable.nonzero().flatten().tolist()
        raise ValueError(
            f"‖A(x)‖² underflows or overflows in {a.dtype} for batch element(s) {rows} "
            f"(smallest: {squared.min().item():.1e}): 1/‖a‖² is not representable, ΔW is undefined there"
        )
    return a




@dataclass(frozen=True)
class LowRankPatch:
    """A patch of one layer shared by every prompt: ``ΔW_s = L Rᵀ`` at each of ``P`` kept
    positions, and ``Δb′`` added after the MLP there (a fitted, query-independent patch).

    Attributes:
        left: ``L``, ``(P, H_s, r)``.
        right: ``R``, ``(P, D, r)``.
        delta_b: ``(P, D)`` shared by every row, ``(B, P, D)`` one per row, or ``None``.
    """

    left: Tensor
    right: Tensor
    delta_b: Tensor | None


#: What a patched pass accepts per layer: the exact update of one prompt, or a fitted patch.
Patch = ImplicitUpdate | LowRankPatch
