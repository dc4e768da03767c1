"""How far a prompt compresses into weights on a real language model: static patches.

The exact patches of :func:`icl_lib.network_update` with ``kept_tokens=K`` absorb a context (the
demonstrations of a few-shot prompt) and leave the query line, ``K`` tokens, to run alone; they
depend on the query. A *static* patch is one query-independent patch per decoder layer and kept
position, fitted over ``Q`` calibration queries that share the context (Mazzawi et al., 2025;
the "thought patch" of Dherin et al., 2025, later versions): with ``a_q`` the reference and
``u_q = W_s δ_q`` the left factor of query ``q``'s exact patch at one layer and position
(``ΔW_q a_q = u_q``),

    Γ = argmin_Γ Σ_q ‖Γ a_q − u_q‖²   (minimum Frobenius norm),     Δb′ = mean_q Δb′_q,

that is ``Γ = Uᵀ A⁺ᵀ`` with ``A (Q, D)`` the stacked ``a_q`` and ``U (Q, H_s)`` the ``u_q``: a
rank-``≤ min(Q, D)`` matrix, kept in this factored form (a dense ``Γ`` per layer and position
would not fit in memory for a real model). The mean is the least-squares constant for ``Δb′``.
With ``Q = 1`` the static patch is the exact patch of that query. This is the language-model
counterpart of :func:`icl_lib.fit_static_patch`, which fits the dense ``Γ`` of one small block.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..core.update import ImplicitUpdate
from ..architectures.causal_lm import LowRankPatch, _language_model, _Prompt, _trace, check_ids, lm_forward_with_updates

__all__ = ["LanguageStaticPatch", "fit_lm_static_patch", "apply_lm_static_patch", "transported_logits", "next_token_kl"]


@dataclass(frozen=True)
class LanguageStaticPatch:
    """One fitted patch per decoder layer and kept position (see :func:`icl_lib.fit_lm_static_patch`).

    Attributes:
        layers: one ``icl_lib.core.update.LowRankPatch`` per layer (``P`` kept positions).
        position_ids: ``(P,)``, where the kept tokens stood in the calibration prompts.
        n_queries: ``Q``, the calibration queries.
        residual: ``(L, P)``: ``(1/Q) Σ_q ‖Γ a_q − u_q‖² / ((1/Q) Σ_q ‖u_q‖²)``, the share of the exact
            patches' effect at their own queries that the fit leaves unexplained.
    """

    layers: tuple[LowRankPatch, ...]
    position_ids: Tensor
    n_queries: int
    residual: Tensor


def _check_kept_updates(updates: object) -> list[ImplicitUpdate]:
    if not isinstance(updates, Sequence) or not updates:
        raise ValueError("updates must be a non-empty sequence of one ImplicitUpdate per decoder layer")
    for i, update in enumerate(updates):
        if not isinstance(update, ImplicitUpdate):
            raise TypeError(f"updates[{i}] must be an icl_lib.ImplicitUpdate, got {type(update).__name__}")
        if update.v.ndim != 3:
            raise ValueError(
                f"updates[{i}] patches the query alone; a static patch needs network_update(..., kept_tokens=K) "
                "updates (one patch per kept token)"
            )
        if update.position_ids is None or not (update.position_ids == update.position_ids[:1]).all():
            raise ValueError("the calibration prompts must share one layout (the same position ids for the kept tokens)")
    return list(updates)


def fit_lm_static_patch(updates: Sequence[ImplicitUpdate], queries: Tensor | None = None) -> LanguageStaticPatch:
    """Fit a static patch from the exact kept-token patches of ``Q`` calibration queries.

    Args:
        updates: from ``network_update(model, input_ids, kept_tokens=K)`` on prompts that share
            their context and differ in the query line: ``u (B, K, H_s)``, ``v (B, K, D)``.
        queries: optional 1-d index of the rows to fit on (the calibration queries); default all.
    """
    updates = _check_kept_updates(updates)
    rows = torch.arange(updates[0].v.shape[0], device=updates[0].v.device) if queries is None else queries
    if not isinstance(rows, Tensor) or rows.ndim != 1 or rows.numel() == 0:
        raise ValueError("queries must be a non-empty 1-d index tensor of calibration rows")
    layers, residuals = [], []
    for update in updates:
        a, u, shift = update.v[rows], update.u[rows], update.delta_b[rows]  # (Q, P, D), (Q, P, H), (Q, P, D)
        a_by_position, u_by_position = a.transpose(0, 1), u.transpose(0, 1)  # (P, Q, D), (P, Q, H)
        inverse = torch.linalg.pinv(a_by_position)  # (P, D, Q): A⁺
        left = u_by_position.transpose(1, 2)  # (P, H, Q): Uᵀ
        layers.append(LowRankPatch(left=left, right=inverse, delta_b=shift.mean(0)))
        fitted = torch.einsum("pqd,pdk,phk->pqh", a_by_position, inverse, left)
        mismatch = (fitted - u_by_position).pow(2).sum(-1).mean(-1)
        residuals.append(mismatch / u_by_position.pow(2).sum(-1).mean(-1))
    return LanguageStaticPatch(
        layers=tuple(layers), position_ids=updates[0].position_ids[0], n_queries=rows.numel(), residual=torch.stack(residuals)
    )


def apply_lm_static_patch(
    model: nn.Module,
    patch: LanguageStaticPatch,
    query_ids: Tensor,
    exact_steering: Sequence[ImplicitUpdate] | None = None,
) -> Tensor:
    """The kept tokens alone (no context) through the model with a static patch: logits ``(B, vocab)``.

    Args:
        model: the language model the patch was fitted for.
        patch: from :func:`icl_lib.fit_lm_static_patch`.
        query_ids: ``(B, P)``, the query lines (the same layout as the calibration prompts' last
            ``P`` tokens), embedded at the calibration position ids.
        exact_steering: optional kept-token updates of these ``B`` prompts: their own ``Δb′``
            replaces the patch's mean one (an oracle that is not query-independent: it measures
            how much of the prompt's effect the static weight patch alone fails to carry).
    """
    if not isinstance(patch, LanguageStaticPatch):
        raise TypeError(f"patch must be an icl_lib.experiments.lm_compression.LanguageStaticPatch, got {type(patch).__name__}")
    lm = _language_model(model)
    query_ids = check_ids(query_ids, "query_ids", lm)
    b, p = query_ids.shape
    if len(patch.layers) != len(lm.layers):
        raise ValueError(f"the patch has {len(patch.layers)} layers but the model has {len(lm.layers)}")
    if p != patch.position_ids.numel():
        raise ValueError(f"query_ids hold {p} tokens per row but the patch was fitted for {patch.position_ids.numel()}")
    for i, (layer, first) in enumerate(zip(patch.layers, lm.firsts)):
        if layer.left.shape[1] != first.out_features or layer.right.shape[1] != first.in_features:
            raise ValueError(f"patch layer {i} does not match the model's layer {i}: fitted for another model")
        if layer.left.dtype != lm.dtype:
            raise ValueError(f"the patch is {layer.left.dtype} but the model's parameters are {lm.dtype}")
    layers = patch.layers
    if exact_steering is not None:
        steering = _check_kept_updates(exact_steering)
        if len(steering) != len(layers) or steering[0].delta_b.shape[:2] != (b, p):
            raise ValueError(f"exact_steering must hold one kept-token update per layer for these {b} query lines")
        layers = tuple(LowRankPatch(layer.left, layer.right, s.delta_b) for layer, s in zip(layers, steering))
    prompt = _Prompt(query_ids, None, patch.position_ids.expand(b, p))
    return _trace(lm, prompt, {}, patches=layers).logits


def transported_logits(model: nn.Module, updates: Sequence[ImplicitUpdate], source: int, query_ids: Tensor) -> Tensor:
    """The exact patches of one prompt (row ``source``) applied to other query lines alone.

    Args:
        model: the language model.
        updates: from ``network_update(..., kept_tokens=K)`` (or the default ``K = 1``).
        source: the row whose patches are carried.
        query_ids: ``(B, K)``, the query lines to run with them.

    Returns:
        ``(B, vocab)``; row ``source`` of it (with its own query line) is the prompted output.
    """
    if not isinstance(query_ids, Tensor) or query_ids.ndim != 2:
        raise ValueError("query_ids must be a (B, K) tensor of token ids")
    b = query_ids.shape[0]
    if isinstance(source, bool) or not isinstance(source, int) or not 0 <= source < updates[0].v.shape[0]:
        raise ValueError(f"source must be a row index of the updates, got {source!r}")
    carried = [
        ImplicitUpdate(
            u=u.u[source : source + 1].expand(b, *u.u.shape[1:]),
            v=u.v[source : source + 1].expand(b, *u.v.shape[1:]),
            delta_b=u.delta_b[source : source + 1].expand(b, *u.delta_b.shape[1:]),
            position=u.position,
            n_tokens=u.n_tokens,
            position_ids=u.position_ids[source : source + 1].expand(b, *u.position_ids.shape[1:]),
        )
        for u in updates
    ]
    return lm_forward_with_updates(model, carried, query_ids)


def next_token_kl(reference: Tensor, logits: Tensor) -> Tensor:
    """``KL(p_ref ‖ p)`` between next-token distributions, in nats, computed in float64: ``(B,)``.

    Args:
        reference: ``(B, vocab)`` logits of the reference (the prompted model).
        logits: ``(B, vocab)`` logits to compare.
    """
    for name, t in (("reference", reference), ("logits", logits)):
        if not isinstance(t, Tensor) or t.ndim != 2:
            raise ValueError(f"{name} must be a (B, vocab) tensor of logits")
    if reference.shape != logits.shape:
        raise ValueError(f"reference {tuple(reference.shape)} and logits {tuple(logits.shape)} differ in shape")
    log_p = torch.log_softmax(reference.double(), dim=-1)
    log_q = torch.log_softmax(logits.double(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)
