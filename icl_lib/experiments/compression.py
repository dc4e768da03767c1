"""How far a patch carries: compressing a prompt into the first MLP weight.

The exact implicit update ``ΔW(C, x) = (W δ) aᵀ / ‖a‖²`` (``a = A(x)``, ``δ = A(C, x) − A(x)``)
reproduces the prompted block at *its* query ``x`` only. This module measures what happens
away from that query:

* :func:`icl_lib.transport_update` applies the patch computed for one query to other queries ``x′``,
  run alone (no context): either as the weight patch, ``W + ΔW(C, x)`` evaluated at ``x′``,
  or as the equivalent first-bias shift ``b + W δ`` (the theorem's bias alternative);
* :func:`icl_lib.fit_static_patch` fits *one* matrix per context over ``K`` calibration queries by
  matching the prompted pre-activations in the least-squares sense,

      ΔW_LS = argmin_Γ  Σ_k ‖(W + Γ) A(x_k) − W A(C, x_k)‖²   (minimum Frobenius norm),

  optionally together with a shift ``Δb`` of the first bias (then ``(W + Γ) A(x_k) + Δb`` is
  matched); :func:`icl_lib.apply_static_patch` runs fresh queries through the patched block.

With ``K = 1`` the least-squares patch is the theorem's rank-1 patch; in general its rank is at
most ``min(K, D)`` (``D`` the MLP input width), because its row space lies in the span of the
``A(x_k)``. All functions work batch-first: a batch of ``B`` tasks, each with its own context.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from ..core.checks import check_tokens, module_dtype_device
from ..core.implicit import ImplicitUpdate, _check_update, forward_with_update
from ..core.architecture import BlockView, view_of

__all__ = [
    "prompts_with_queries",
    "transport_update",
    "StaticPatch",
    "fit_static_patch",
    "apply_static_patch",
    "apply_weight_patch",
    "BinnedMean",
    "binned_mean",
]


def _check_queries(block: nn.Module, queries: object, name: str = "queries") -> tuple[BlockView, Tensor]:
    """Validate ``queries (B, K, D)``: query tokens, one prompt position each, for the block."""
    view = view_of(block)
    dtype, device = module_dtype_device(block)
    queries = check_tokens(queries, name, width=view.first.in_features, dtype=dtype, device=device)
    return view, queries


def prompts_with_queries(context: Tensor, queries: Tensor) -> Tensor:
    """Every query of a task appended to that task's context.

    Args:
        context: ``(B, N, D)``, the context tokens of each task (``N ≥ 0``).
        queries: ``(B, K, D)``, ``K`` query tokens per task.

    Returns:
        ``(B·K, N + 1, D)``: prompt ``b·K + k`` is ``[context[b], queries[b, k]]``.
    """
    for name, t in (("context", context), ("queries", queries)):
        if not isinstance(t, Tensor) or t.ndim != 3:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a (B, ·, D) tensor, got {got}")
    b, n, d = context.shape
    if queries.shape[0] != b or queries.shape[2] != d:
        raise ValueError(f"queries {tuple(queries.shape)} do not match context {tuple(context.shape)} in B or D")
    if queries.dtype != context.dtype or queries.device != context.device:
        raise TypeError(
            f"queries are {queries.dtype} on {queries.device} but context is {context.dtype} on {context.device}"
        )
    k = queries.shape[1]
    if k == 0:
        raise ValueError("queries holds no query (K = 0)")
    shared = context[:, None].expand(b, k, n, d)
    return torch.cat([shared, queries[:, :, None]], dim=2).reshape(b * k, n + 1, d)


def _repeat(t: Tensor | None, k: int) -> Tensor | None:
    return None if t is None else t.repeat_interleave(k, dim=0)


def transport_update(
    block: nn.Module, update: ImplicitUpdate, queries: Tensor, mode: Literal["weight", "bias"] = "weight"
) -> Tensor:
    """The block at other queries, alone, carrying the patch computed for one query per task.

    Args:
        block: the block the update was computed for.
        update: one query-position update per task (``u (B, H)``, ``v (B, D)``), e.g. from
            ``implicit_update(block, tokens)`` with the whole context absorbed.
        queries: ``(B, K, D)``: ``K`` query tokens per task, each run *without* context.
        mode: ``"weight"``: ``W + ΔW = W + u vᵀ/‖v‖²``, so the pre-activation at ``x′`` is
            ``W A(x′) + b + u · vᵀA(x′)/‖v‖²``; ``"bias"``: the first bias shifted by ``u = W δ``,
            pre-activation ``W A(x′) + b + u``. Both equal the prompted output when ``x′ = x``.
            The output-bias shift ``Δb′`` of a residual block is carried unchanged in both modes.

    Returns:
        ``(B, K, D_out)``: the block's output at each query.
    """
    dtype, _ = module_dtype_device(block)
    view, queries = _check_queries(block, queries)
    update = _check_update(update, view, dtype)
    if update.stacked:
        raise ValueError("update holds several updates per task (u is (B, P, H)); pass one update per task")
    b, k, d = queries.shape
    if update.v.shape[0] != b:
        raise ValueError(f"queries have batch size {b} but the update has {update.v.shape[0]}")
    if mode not in ("weight", "bias"):
        raise ValueError(f"mode must be 'weight' or 'bias', got {mode!r}")
    alone = queries.reshape(b * k, 1, d)
    if mode == "weight":
        repeated = replace(update, u=_repeat(update.u, k), v=_repeat(update.v, k), delta_b=_repeat(update.delta_b, k))
        return forward_with_update(block, repeated, alone).view(b, k, -1)
    m, h = view.stream(alone)
    pre = view.first(m[:, -1]) + _repeat(update.u, k)
    out = view.finish(pre, None if h is None else h[:, -1], _repeat(update.delta_b, k))
    return out.view(b, k, -1)


@dataclass(frozen=True)
class StaticPatch:
    """One patch per task, fitted over ``K`` calibration queries (see :func:`icl_lib.fit_static_patch`).

    Attributes:
        delta_W: ``(B, H, D)``, the fitted update of the first MLP weight.
        delta_b: ``(B, H)``, the fitted shift of the first MLP bias, or ``None`` if not fitted.
        n_queries: ``K``, the number of calibration queries.
        residual: ``(B,)``, the mean squared pre-activation mismatch left on the calibration
            queries, ``(1/K) Σ_k ‖(W + ΔW) A(x_k) + Δb − W A(C, x_k)‖²``.
    """

    delta_W: Tensor
    delta_b: Tensor | None
    n_queries: int
    residual: Tensor

    def rank(self) -> Tensor:
        """Numerical rank of each ``ΔW`` (``torch.linalg.matrix_rank``, default tolerance), ``(B,)``."""
        return torch.linalg.matrix_rank(self.delta_W)


def _mlp_inputs_without_residual(view: BlockView, tokens: Tensor) -> Tensor:
    """MLP input at the last position, ``(B, D)``; refuse blocks with a residual stream."""
    m, h = view.stream(tokens)
    if h is not None:
        raise ValueError(
            "fit_static_patch supports plain blocks only (residual=False): with a residual stream the "
            "prompt also shifts the block's output through h, which a patch of W cannot absorb"
        )
    return m[:, -1]


def fit_static_patch(block: nn.Module, context: Tensor, queries: Tensor, *, bias: bool = False) -> StaticPatch:
    """Least-squares patch of ``W`` (and optionally ``b``) that serves many queries of one context.

    For each task, with ``a_k = A(x_k)`` (query alone) and ``r_k = W (A(C, x_k) − A(x_k))``,
    solves ``min Σ_k ‖Γ a_k + β − r_k‖²`` for ``Γ (H, D)`` (and ``β (H,)`` when ``bias``) with
    the minimum-norm solution of the pseudo-inverse: stacking ``M = [a_k (, 1)]ᵀ (K, D(+1))`` and
    ``R = [r_k]ᵀ (K, H)``, ``[Γ, β]ᵀ = M⁺ R``. The prompted *pre-activations* are matched, so the
    fit needs no labels; with ``K = 1`` and no bias, ``Γ`` is the theorem's rank-1 ``ΔW(C, x_1)``.

    Args:
        block: a plain block (no residual stream): :class:`icl_lib.Block` with ``residual=False``.
        context: ``(B, N, D)``, ``N ≥ 1`` context tokens per task.
        queries: ``(B, K, D)``, ``K ≥ 1`` calibration query tokens per task.
        bias: also fit a shift ``Δb`` of the first MLP bias.

    Returns:
        a :class:`icl_lib.StaticPatch`.
    """
    view, queries = _check_queries(block, queries)
    _, context = _check_queries(block, context, "context")
    b, k, d = queries.shape
    if context.shape[0] != b:
        raise ValueError(f"context has batch size {context.shape[0]} but queries have {b}")
    if not isinstance(bias, bool):
        raise TypeError(f"bias must be a bool, got {type(bias).__name__}")
    weight = view.first.weight  # (H, D)
    prompted = _mlp_inputs_without_residual(view, prompts_with_queries(context, queries)).view(b, k, d)
    alone = _mlp_inputs_without_residual(view, queries.reshape(b * k, 1, d)).view(b, k, d)
    if (alone == 0).all(dim=-1).any():
        raise ValueError("A(x_k) is exactly zero for some calibration query: it carries no information for the fit")
    targets = (prompted - alone) @ weight.T  # (B, K, H)
    design = torch.cat([alone, alone.new_ones(b, k, 1)], dim=-1) if bias else alone  # (B, K, D(+1))
    solution = torch.linalg.pinv(design) @ targets  # (B, D(+1), H)
    delta_W = solution[:, :d].transpose(1, 2)
    delta_b = solution[:, d] if bias else None
    mismatch = design @ solution - targets
    residual = mismatch.pow(2).sum(-1).mean(-1)
    return StaticPatch(delta_W=delta_W.contiguous(), delta_b=delta_b, n_queries=k, residual=residual)


def apply_weight_patch(block: nn.Module, delta_W: Tensor, queries: Tensor, delta_b: Tensor | None = None) -> Tensor:
    """The plain block with ``W + ΔW`` (and ``b + Δb``), one patch per task, at each query alone.

    Any per-task patch of the first MLP layer fits here: a :class:`icl_lib.StaticPatch`'s fields, or a
    fine-tuned ``W_ft − W``.

    Args:
        block: a plain block (no residual stream).
        delta_W: ``(B, H, D)``, one update of the first MLP weight per task.
        queries: ``(B, K, D)``, query tokens, each run without context.
        delta_b: optional ``(B, H)`` shift of the first MLP bias.

    Returns:
        ``(B, K, D_out)``.
    """
    view, queries = _check_queries(block, queries)
    b, k, d = queries.shape
    for name, t, shape in (("delta_W", delta_W, (b, *view.first.weight.shape)), ("delta_b", delta_b, (b, view.first.out_features))):
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape} (one patch per task)")
        if t.dtype != queries.dtype or t.device != queries.device:
            raise TypeError(f"{name} is {t.dtype} on {t.device} but the block is {queries.dtype} on {queries.device}")
    m = _mlp_inputs_without_residual(view, queries.reshape(b * k, 1, d)).view(b, k, d)
    pre = view.first(m) + m @ delta_W.transpose(1, 2)
    if delta_b is not None:
        pre = pre + delta_b[:, None]
    return view.finish(pre, None)


def apply_static_patch(block: nn.Module, patch: StaticPatch, queries: Tensor) -> Tensor:
    """The plain block with a fitted :class:`icl_lib.StaticPatch` at each query alone: ``(B, K, D_out)``.

    Args:
        block: the block the patch was fitted for.
        patch: from :func:`icl_lib.fit_static_patch`.
        queries: ``(B, K, D)``, query tokens, each run without context.
    """
    if not isinstance(patch, StaticPatch):
        raise TypeError(f"patch must be an icl_lib.StaticPatch, got {type(patch).__name__}")
    return apply_weight_patch(block, patch.delta_W, queries, patch.delta_b)


@dataclass(frozen=True)
class BinnedMean:
    """Means of a quantity in bins of another (NumPy arrays of length ``n_bins``).

    Attributes:
        edges: ``(n_bins + 1,)`` bin edges; centres: ``(n_bins,)`` their midpoints.
        mean, sem: mean and standard error (``std / √count``, ``ddof=1``; NaN if count < 2).
        count: number of samples in each bin.
    """

    edges: np.ndarray
    centres: np.ndarray
    mean: np.ndarray
    sem: np.ndarray
    count: np.ndarray


def binned_mean(x: Tensor | np.ndarray, y: Tensor | np.ndarray, edges: Tensor | np.ndarray) -> BinnedMean:
    """Mean and standard error of ``y`` over the samples whose ``x`` falls in each bin.

    Bins are half-open ``[edges[j], edges[j+1])``; samples outside ``[edges[0], edges[-1])`` are
    dropped. ``x`` and ``y`` are flattened and must have the same number of elements.
    """
    x = np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x, dtype=np.float64).ravel()
    y = np.asarray(y.detach().cpu() if isinstance(y, Tensor) else y, dtype=np.float64).ravel()
    edges = np.asarray(edges.detach().cpu() if isinstance(edges, Tensor) else edges, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same number of elements, got {x.size} and {y.size}")
    if edges.ndim != 1 or edges.size < 2 or not np.all(np.diff(edges) > 0):
        raise ValueError("edges must be a 1-d increasing sequence of at least two numbers")
    if not (np.isfinite(x).all() and np.isfinite(y).all() and np.isfinite(edges).all()):
        raise ValueError("x, y and edges must be finite")
    index = np.searchsorted(edges, x, side="right") - 1
    n_bins = edges.size - 1
    inside = (index >= 0) & (index < n_bins)
    mean, sem, count = np.full(n_bins, np.nan), np.full(n_bins, np.nan), np.zeros(n_bins, dtype=int)
    for j in range(n_bins):
        values = y[inside & (index == j)]
        count[j] = values.size
        if values.size:
            mean[j] = values.mean()
        if values.size >= 2:
            sem[j] = values.std(ddof=1) / np.sqrt(values.size)
    return BinnedMean(edges=edges, centres=(edges[:-1] + edges[1:]) / 2, mean=mean, sem=sem, count=count)
