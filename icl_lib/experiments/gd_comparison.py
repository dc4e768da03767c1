"""Two readings of in-context learning side by side: implicit GD on ``W``, GD on the task weights.

For a block ``T_W = M_W ∘ A`` whose contextual layer is :func:`icl_lib.gd_linear_attention`,
the layer's output at the query is ``A(C, x) = (x_q, ⟨Δw, x_q⟩)`` and ``A(x) = (x_q, 0)``, where
``Δw = (ν/N) Σ_j y_j x_j`` is one gradient step on the regression weights from ``w = 0``
(von Oswald et al., 2023). Two rank-1 patches of the MLP's first weight ``W (H, D)`` follow,
both multiples on the left of ``W_{:,D}``, the last column of ``W`` (the one that reads the label
coordinate):

* the **GD patch** ``ΔW_GD = W_{:,D} [Δw; 0]ᵀ``, exact at *every* query, since
  ``(W + ΔW_GD)(x′, 0) = W (x′, ⟨Δw, x′⟩) = W A(C, x′)``;
* the theorem's **implicit update** ``ΔW = W (A(C,x) − A(x)) A(x)ᵀ/‖A(x)‖²``
  ``= W_{:,D} ⟨Δw, x_q⟩ [x_q; 0]ᵀ/‖x_q‖² = ΔW_GD Π_q``, with ``Π_q`` the projection on ``(x_q, 0)``.

So the implicit update is the GD patch with its right factor projected on the query:
``cos(ΔW, ΔW_GD) = ‖ΔW‖/‖ΔW_GD‖ = |cos ∠(x_q, Δw)|``. :func:`compare_with_gd` computes both
patches and these quantities from the block itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..core.implicit import implicit_update
from ..core.metrics import frobenius_alignment
from ..core.update import ImplicitUpdate
from .compression import apply_weight_patch, prompts_with_queries, transport_update
from .tasks import RegressionBatch

__all__ = [
    "gd_step",
    "gd_weight_patch",
    "GDComparison",
    "compare_with_gd",
    "patch_errors",
    "one_step_expected_loss",
    "optimal_one_step_lr",
]


def gd_step(x_context: Tensor, y_context: Tensor, lr: float, w0: Tensor | None = None) -> Tensor:
    """One gradient step on ``L(w) = 1/(2N) Σ_j (⟨w, x_j⟩ − y_j)²`` for each task.

    ``w₁ = w₀ − ν ∇L(w₀) = w₀ + (ν/N) Σ_j (y_j − ⟨w₀, x_j⟩) x_j``.

    Args:
        x_context: ``(B, N, d)`` inputs, ``N ≥ 1``.
        y_context: ``(B, N)`` labels.
        lr: the step size ``ν``.
        w0: ``(B, d)`` starting weights; default zero.

    Returns:
        ``(B, d)``, the weights after the step.
    """
    if not isinstance(x_context, Tensor) or x_context.ndim != 3 or x_context.shape[1] < 1:
        raise ValueError("x_context must be a (B, N, d) tensor with N ≥ 1")
    b, n, d = x_context.shape
    if not isinstance(y_context, Tensor) or tuple(y_context.shape) != (b, n):
        raise ValueError(f"y_context must be a tensor of shape (B, N) = {(b, n)}")
    if w0 is None:
        w0 = x_context.new_zeros(b, d)
    elif not isinstance(w0, Tensor) or tuple(w0.shape) != (b, d):
        raise ValueError(f"w0 must be a tensor of shape (B, d) = {(b, d)}")
    residual = y_context - torch.einsum("bnd,bd->bn", x_context, w0)  # (B, N)
    return w0 + (lr / n) * torch.einsum("bn,bnd->bd", residual, x_context)


def gd_weight_patch(W: Tensor, step: Tensor) -> Tensor:
    """``ΔW_GD = W_{:,D} [Δw; 0]ᵀ``: the weight patch that adds ``⟨Δw, x′⟩`` to the label coordinate.

    ``W_{:,D}`` is the last column of ``W``, the one that reads the label coordinate.

    Args:
        W: ``(H, D)``, the MLP's first weight, ``D = d + 1``.
        step: ``(B, d)``, the change ``Δw`` of the regression weights.

    Returns:
        ``(B, H, D)``, one patch per task.
    """
    if not isinstance(W, Tensor) or W.ndim != 2 or not isinstance(step, Tensor) or step.ndim != 2:
        raise ValueError("W must be (H, D) and step (B, d)")
    if W.shape[1] != step.shape[1] + 1:
        raise ValueError(f"W has {W.shape[1]} columns; step needs d + 1 = {step.shape[1] + 1}")
    padded = torch.cat([step, step.new_zeros(step.shape[0], 1)], dim=1)  # (B, D)
    return W[:, -1][None, :, None] * padded[:, None, :]


@dataclass(frozen=True)
class GDComparison:
    """The implicit update and the GD patch of each task (``B`` tasks, ``W`` of shape ``(H, D)``).

    Attributes:
        implicit: the theorem's update, whole context absorbed (:func:`icl_lib.implicit_update`).
        step: ``(B, d)``, ``Δw``, one gradient step from ``w = 0`` (:func:`gd_step`).
        delta_W: ``(B, H, D)``, the implicit update as a matrix.
        gd_patch: ``(B, H, D)``, ``ΔW_GD`` (:func:`gd_weight_patch`).
        projected: ``(B, H, D)``, ``ΔW_GD Π_q``: the GD patch times the projection on ``(x_q, 0)``.
        cosine: ``(B,)``, Frobenius cosine of ``ΔW`` and ``ΔW_GD``.
        norm_ratio: ``(B,)``, ``‖ΔW‖_F / ‖ΔW_GD‖_F``.
        query_cosine: ``(B,)``, ``|cos ∠(x_q, Δw)|``.
    """

    implicit: ImplicitUpdate
    step: Tensor
    delta_W: Tensor
    gd_patch: Tensor
    projected: Tensor
    cosine: Tensor
    norm_ratio: Tensor
    query_cosine: Tensor


def compare_with_gd(block: nn.Module, tasks: RegressionBatch, lr: float) -> GDComparison:
    """The implicit update of ``block`` next to the GD patch, for every task of ``tasks``.

    Args:
        block: a plain block (``residual=False``) whose first MLP weight is ``block.mlp.up.weight``
            and whose contextual layer is meant to take one gradient step of rate ``lr``
            (:func:`icl_lib.gd_linear_attention`); nothing here assumes it does: ``projected``
            equals ``delta_W`` only if it does.
        tasks: regression prompts, tokens of width ``d + 1``.
        lr: ``ν``, the rate of the step the layer is meant to take.
    """
    if not isinstance(tasks, RegressionBatch):
        raise TypeError(f"tasks must be an icl_lib.RegressionBatch, got {type(tasks).__name__}")
    if getattr(block, "residual", False):
        raise ValueError("compare_with_gd needs a plain block (residual=False)")
    W = block.mlp.up.weight.detach()  # (H, D)
    with torch.no_grad():
        implicit = implicit_update(block, tasks.tokens)
    step = gd_step(tasks.x_context, tasks.y_context, lr)  # (B, d)
    gd_patch = gd_weight_patch(W, step)
    x_q = torch.cat([tasks.x_query, tasks.x_query.new_zeros(len(step), 1)], dim=1)  # (B, D)
    projector = x_q[:, :, None] * x_q[:, None, :] / (x_q * x_q).sum(-1)[:, None, None]
    projected = gd_patch @ projector
    delta_W = implicit.delta_W
    norms = (delta_W.flatten(1).norm(dim=1), gd_patch.flatten(1).norm(dim=1))
    query_cosine = (step * tasks.x_query).sum(-1).abs() / (step.norm(dim=-1) * tasks.x_query.norm(dim=-1))
    return GDComparison(
        implicit=implicit, step=step, delta_W=delta_W, gd_patch=gd_patch, projected=projected,
        cosine=frobenius_alignment(delta_W, gd_patch), norm_ratio=norms[0] / norms[1], query_cosine=query_cosine,
    )


def one_step_expected_loss(dim: int, n_context: int, lr: float) -> float:
    """Expected loss ``½ E(⟨w₁, x_q⟩ − y_q)²`` of one gradient step from ``w = 0``.

    For the book's task (``x_j, x_q, w ~ N(0, I_d)``, noiseless labels), ``w₁ = ν S w`` with
    ``S = (1/N) Σ_j x_j x_jᵀ``, ``E S = I`` and ``E S² = (1 + (d + 1)/N) I``, so the loss is
    ``½ d (ν² (1 + (d + 1)/N) − 2ν + 1)``.
    """
    if dim < 1 or n_context < 1:
        raise ValueError(f"dim and n_context must be positive, got {dim}, {n_context}")
    return 0.5 * dim * (lr**2 * (1 + (dim + 1) / n_context) - 2 * lr + 1)


def optimal_one_step_lr(dim: int, n_context: int) -> float:
    """The step size that minimises :func:`one_step_expected_loss`: ``ν* = N / (N + d + 1)``."""
    if dim < 1 or n_context < 1:
        raise ValueError(f"dim and n_context must be positive, got {dim}, {n_context}")
    return n_context / (n_context + dim + 1)


def patch_errors(block: nn.Module, comparison: GDComparison, tasks: RegressionBatch,
                 x_queries: Tensor) -> tuple[Tensor, Tensor]:
    """Relative errors of the two patches at other queries of the same context.

    At each query ``x′`` (run alone, token ``(x′, 0)``) the patched block is compared with the
    block on the prompt ``[C, (x′, 0)]``, relative to the size of the context's effect on this
    task's queries: ``‖T_{W+P}(x′) − T_W(C, x′)‖ / s`` with
    ``s² = mean_k ‖T_W(C, x′_k) − T_W(x′_k)‖²`` over the task's ``K`` queries, for ``P = ΔW(C, x)`` (computed at the task's own query) and
    for ``P = ΔW_GD``. Ignoring the context has an error of 1 on this scale, in the mean square.

    Args:
        block: the block ``comparison`` was computed for.
        comparison: from :func:`compare_with_gd` on ``tasks``.
        tasks: the ``B`` prompts.
        x_queries: ``(B, K, d)``, other query inputs for each task.

    Returns:
        ``(implicit, gd)``, two ``(B, K)`` tensors of relative errors.
    """
    b, d = tasks.x_query.shape
    if not isinstance(x_queries, Tensor) or x_queries.ndim != 3 or x_queries.shape[0] != b or x_queries.shape[2] != d:
        raise ValueError(f"x_queries must have shape (B, K, d) = ({b}, K, {d})")
    k = x_queries.shape[1]
    queries = torch.cat([x_queries, x_queries.new_zeros(b, k, 1)], dim=-1)  # (B, K, D)
    with torch.no_grad():
        prompted = block(prompts_with_queries(tasks.tokens[:, :-1], queries))[:, -1].view(b, k, -1)
        alone = block(queries.reshape(b * k, 1, -1))[:, -1].view(b, k, -1)
        patched = (transport_update(block, comparison.implicit, queries),
                   apply_weight_patch(block, comparison.gd_patch, queries))
    scale = (prompted - alone).pow(2).sum(-1).mean(-1, keepdim=True).sqrt()  # (B, 1)
    implicit, gd = ((p - prompted).norm(dim=-1) / scale for p in patched)
    return implicit, gd
