"""Measurements on stacks of blocks: per-block and whole-network gaps, every position, ranks, alignment.

These functions turn the exact identities of :mod:`icl_lib.core.implicit` into the numbers the
"Beyond the paper" chapters report (Innocenti & Achour, 2025):

* :func:`block_gaps`: for every block of a stack, ``‖out_ℓ(prompt) − out_ℓ(query alone, patched)‖``
  at the query, each block fed the tokens its predecessor produces on the prompt;
* :func:`network_gap`: the whole stack run on the prompt versus the query alone through the
  stack with every block patched;
* :func:`position_gaps`: the theorem at every position of one block, in one batched call;
* :func:`summed_update`, :func:`singular_value_ratio`: the rank of ``Σ_i ΔW_i``;
* :func:`update_cosines`: the Frobenius cosine of the updates of different positions, read off
  the left factors (all of them share the right factor ``v``);
* :func:`mean_sem`: mean and standard error over tasks.

Every function runs without building a graph (``torch.no_grad``) and leaves the modules untouched.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .architecture import network_of
from .implicit import forward_with_update, implicit_update
from .update import ImplicitUpdate

__all__ = [
    "mean_sem",
    "block_gaps",
    "network_gap",
    "position_gaps",
    "summed_update",
    "singular_value_ratio",
    "update_cosines",
    "patch_cosines",
]


def mean_sem(values: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and standard error of the mean over the first axis.

    Args:
        values: ``(B, ...)`` with ``B ≥ 2`` samples (tasks) along the first axis, finite.

    Returns:
        ``(mean, sem)``, each of shape ``values.shape[1:]``; ``sem = std / √B`` with the
        unbiased standard deviation.
    """
    if not isinstance(values, Tensor):
        raise TypeError(f"values must be a torch.Tensor, got {type(values).__name__}")
    if values.ndim < 1 or values.shape[0] < 2:
        raise ValueError(f"values needs at least 2 samples along its first axis, got shape {tuple(values.shape)}")
    if not values.is_floating_point():
        raise TypeError(f"values must be a floating-point tensor, got {values.dtype}")
    if not torch.isfinite(values).all():
        raise ValueError("values contains non-finite entries (NaN or inf)")
    return values.mean(0), values.std(0) / math.sqrt(values.shape[0])


@torch.no_grad()
def block_gaps(
    model: nn.Module,
    tokens: Tensor,
    position: int | str = -1,
    *,
    attention_mask: Tensor | None = None,
    relative: bool = False,
) -> Tensor:
    """Per block, the distance between the prompted output and the patched query-alone output.

    Block ``ℓ`` receives ``z = `` the tokens block ``ℓ−1`` outputs on the prompt
    (:func:`icl_lib.block_inputs`); its update ``(ΔW, Δb′)`` absorbs the whole context of ``z``,
    and the gap is ``‖block_ℓ(z)[p] − patched block_ℓ(z[query])‖₂`` at position ``p``.

    Args:
        model: a stack (:class:`icl_lib.Transformer`, ``torch.nn.TransformerEncoder`` in eval
            mode, or an ``nn.Sequential`` / ``nn.ModuleList`` of supported blocks), or a
            ``transformers`` causal LM (then block = decoder layer).
        tokens: the prompts ``(B, T, in_dim)``, ``T ≥ 2`` (context then query); token ids
            ``(B, T)`` for a language model.
        position: the position ``p`` compared (default the query), or ``"all"``.
        attention_mask: language models only: ``(B, T)``, 0 for left padding.
        relative: divide each gap by the norm of the block's prompted output there.

    Returns:
        ``(B, depth)``, or ``(B, depth, T)`` for ``position="all"``: the Euclidean norm of the
        difference of the two ``D``-vectors (relative to the prompted output's norm if asked).
    """
    if not isinstance(relative, bool):
        raise TypeError(f"relative must be a bool, got {type(relative).__name__}")
    return network_of(model).block_gaps(tokens, attention_mask, position, relative)


@torch.no_grad()
def network_gap(model: nn.Module, tokens: Tensor, *, attention_mask: Tensor | None = None) -> Tensor:
    """The whole stack on the prompt versus the query alone through the stack, every block patched.

    Args:
        model: a stack, as for :func:`block_gaps`, or a ``transformers`` causal LM.
        tokens: the prompts ``(B, T, in_dim)``, ``T ≥ 2``; token ids ``(B, T)`` for a language model.
        attention_mask: language models only: ``(B, T)``, 0 for left padding.

    Returns:
        ``(B,)``: ``‖model(tokens)[query] − forward_with_updates(model, network_update(...), query)‖₂``,
        the norm taken over the model's output coordinates (the logits, for a language model).
    """
    return network_of(model).network_gap(tokens, attention_mask)


@torch.no_grad()
def position_gaps(block: nn.Module, tokens: Tensor) -> Tensor:
    """The theorem at every position of one block (Innocenti & Achour, 2025), checked in one batched call.

    For each position ``i`` the update ``(ΔW_i, Δb′_i)`` of
    ``implicit_update(block, tokens, position="all")`` is applied to the block run on the query
    alone, and compared with the block's output at position ``i`` of the prompt.

    Args:
        block: an :class:`icl_lib.Block` or a ``torch.nn.TransformerEncoderLayer`` (eval mode).
        tokens: ``(B, T, D)``, ``T ≥ 2``.

    Returns:
        ``(B, T)``: ``‖out_i(prompt) − patched out(query alone)‖₂`` for every position ``i``.
    """
    update = implicit_update(block, tokens, position="all")
    patched = forward_with_update(block, update, tokens[:, -1:])  # (B, T, D)
    return (block(tokens) - patched).norm(dim=-1)


def _check_update(update: object, *, stacked: bool | None = None) -> ImplicitUpdate:
    if not isinstance(update, ImplicitUpdate):
        raise TypeError(f"update must be an icl_lib.ImplicitUpdate, got {type(update).__name__}")
    if stacked is True and not update.stacked:
        raise ValueError("update holds one update per prompt; pass one with position='all' (u of shape (B, P, H))")
    if stacked is False and update.stacked:
        raise ValueError("update holds several updates per prompt (u of shape (B, P, H)); pass one per prompt")
    return update


def summed_update(update: ImplicitUpdate) -> Tensor:
    """``Σ_i ΔW_i``: the sum of the dense updates of every position, ``(B, H, D)``.

    The dense ``(B, P, H, D)`` tensor is materialised and summed over positions, so the rank of
    the result is measured on the matrices themselves, not deduced from the factored form.

    Args:
        update: a stacked update (``implicit_update(..., position="all")``), ``u (B, P, H)``.
    """
    return _check_update(update, stacked=True).delta_W.sum(dim=1)


def singular_value_ratio(matrices: Tensor) -> Tensor:
    """``σ₂ / σ₁`` of each matrix: zero for a rank-1 matrix (up to round-off).

    Args:
        matrices: ``(..., H, D)`` with ``min(H, D) ≥ 2``, finite and not all zero.

    Returns:
        ``(...)``, in the dtype of ``matrices``.
    """
    if not isinstance(matrices, Tensor) or not matrices.is_floating_point():
        raise TypeError("matrices must be a floating-point torch.Tensor of shape (..., H, D)")
    if matrices.ndim < 2 or min(matrices.shape[-2:]) < 2:
        raise ValueError(f"matrices must be (..., H, D) with H, D ≥ 2, got shape {tuple(matrices.shape)}")
    if not torch.isfinite(matrices).all():
        raise ValueError("matrices contains non-finite entries (NaN or inf)")
    sigma = torch.linalg.svdvals(matrices)
    if (sigma[..., 0] == 0).any():
        raise ValueError("a matrix is exactly zero: σ₂/σ₁ is undefined")
    return sigma[..., 1] / sigma[..., 0]


def update_cosines(update: ImplicitUpdate) -> Tensor:
    """The Frobenius cosine of the updates of every pair of positions of one block.

    All ``ΔW_i = u_i vᵀ / ‖v‖²`` of a stacked update share ``v``, so
    ``⟨ΔW_i, ΔW_j⟩_F = (u_i · u_j) / ‖v‖²`` and ``‖ΔW_i‖_F = ‖u_i‖ / ‖v‖``: the Frobenius
    cosine of ``ΔW_i`` and ``ΔW_j`` is the cosine of ``u_i`` and ``u_j``. No dense matrix is formed.

    Args:
        update: a stacked update (``position="all"``), ``u (B, P, H)``.

    Returns:
        ``(B, P, P)``, symmetric, with ones on the diagonal.
    """
    u = _check_update(update, stacked=True).u
    norms = u.norm(dim=-1)  # (B, P)
    if (norms == 0).any():
        batch, position = (norms == 0).nonzero()[0].tolist()
        raise ValueError(f"the update of position {position} (batch element {batch}) is zero: its cosine is undefined")
    unit = u / norms[..., None]
    return unit @ unit.transpose(-1, -2)


def patch_cosines(update: ImplicitUpdate) -> Tensor:
    """The Frobenius cosine of the patches of every pair of prompts of a batch.

    Each prompt has its own ``ΔW_b = u_b v_bᵀ/‖v_b‖²``, so
    ``⟨ΔW_a, ΔW_b⟩_F = (u_a · u_b)(v_a · v_b)/(‖v_a‖² ‖v_b‖²)``: the Frobenius cosine is
    ``cos(u_a, u_b) · cos(v_a, v_b)``. No dense matrix is formed.

    Args:
        update: one update per prompt, ``u (B, H)``, ``v (B, D)`` (e.g. one decoder layer's entry
            of ``network_update``).

    Returns:
        ``(B, B)``, symmetric, with ones on the diagonal.
    """
    update = _check_update(update, stacked=False)
    if update.v.ndim != 2:
        raise ValueError("update must hold one patch per prompt (u (B, H), v (B, D))")
    u, v = update.u, update.v
    if (u.norm(dim=-1) == 0).any():
        raise ValueError("a patch is zero: its cosine is undefined")
    unit_u, unit_v = u / u.norm(dim=-1, keepdim=True), v / v.norm(dim=-1, keepdim=True)
    return (unit_u @ unit_u.T) * (unit_v @ unit_v.T)
