"""Exact implicit weight updates: a context becomes a rank-1 patch of the first MLP weight.

For one block (:func:`implicit_update`, :func:`forward_with_update`) the computation is written
here once, against the :class:`~icl_lib.core.architecture.BlockView` of the block. For a whole
model (:func:`network_update`, :func:`forward_with_updates`, :func:`block_inputs`) the model's
architecture runs it (:func:`~icl_lib.core.architecture.network_of`): the library's stacks
block by block through their views, a ``transformers`` causal LM through its own forward with
hooks at the four sites. The notation is that of :mod:`icl_lib.core.update`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .architecture import BlockView, network_of, view_of
from .checks import check_mask, check_position, check_tokens, module_dtype_device
from .update import ImplicitUpdate, check_reference

__all__ = [
    "ImplicitUpdate",
    "implicit_update",
    "forward_with_update",
    "network_update",
    "forward_with_updates",
    "block_inputs",
]


def _keep_from_absorb(absorb: Tensor) -> Tensor:
    """(B, N) mask of absorbed context tokens -> (B, N + 1) mask of kept tokens (query kept)."""
    query = torch.ones_like(absorb[:, :1])
    return torch.cat([~absorb, query], dim=1)


def _reference(view: BlockView, tokens: Tensor, keep: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """MLP input ``a (B, D)`` and residual stream at the query, absorbed tokens absent."""
    if keep is None:
        m, h = view.stream(tokens[:, -1:])
    else:
        m, h = view.stream(tokens, keep)
    return check_reference(m[:, -1]), None if h is None else h[:, -1]


def _at(x: Tensor | None, position: int | None) -> Tensor | None:
    """``x (B, T, ...)`` at one position (``(B, ...)``), or whole for every position (``None``)."""
    return x if x is None or position is None else x[:, position]


def _update(
    view: BlockView, tokens: Tensor, pre: Tensor, h: Tensor | None, keep: Tensor | None, position: int | None
) -> ImplicitUpdate:
    """The update from the prompted pre-activations ``pre = W m_p + b`` and residual streams ``h``
    at the reproduced position(s), ``(B, H)`` and ``(B, D)``, or ``(B, T, ·)`` for every position.

    ``u = W δ = (W m_p + b) − (W a + b)``: the prompted forward pass has computed ``W m_p + b``
    already, so the update costs one query-alone pass and a subtraction per position.
    """
    a, h_a = _reference(view, tokens, keep)
    pre_a, stacked = view.first(a), position is None
    u = pre - (pre_a[:, None] if stacked else pre_a)
    shift = None if h is None else h - (h_a[:, None] if stacked else h_a)
    return ImplicitUpdate(u=u, v=a, delta_b=shift, position=position, n_tokens=tokens.shape[1])


def _check_block_tokens(block: nn.Module, tokens: object, name: str, min_length: int, batch: int | None = None):
    """The block's view, its parameters' dtype, and the validated tokens."""
    view = view_of(block)
    dtype, device = module_dtype_device(block)
    tokens = check_tokens(
        tokens, name, width=view.first.in_features, dtype=dtype, device=device, min_length=min_length, batch=batch
    )
    return view, dtype, tokens


def implicit_update(
    block: nn.Module, tokens: Tensor, absorb: Tensor | None = None, position: int | str = -1
) -> ImplicitUpdate:
    """The exact implicit update that absorbs (part of) the context into ``W`` (and ``b′``).

    Args:
        block: an :class:`icl_lib.Block` or a ``torch.nn.TransformerEncoderLayer``.
        tokens: the prompt ``(B, T, D)``: context ``c_1..c_N`` then the query (``T = N + 1 ≥ 2``).
        absorb: ``None`` to absorb the whole context (``Y = C``), or a boolean ``(B, T-1)`` mask
            of the context tokens ``Y`` to absorb; the others stay in the prompt.
        position: the prompt position whose output the patch reproduces (default the query),
            or ``"all"`` for one update per position, sharing ``v``.

    Returns:
        an :class:`ImplicitUpdate`; with ``u (B, H)`` or ``(B, T, H)`` for ``position="all"``.
        :func:`forward_with_update` on the kept tokens then reproduces the prompted output.
    """
    view, _, tokens = _check_block_tokens(block, tokens, "tokens", min_length=2)
    b, t, _ = tokens.shape
    pos = check_position(position, t)
    keep = None
    if absorb is not None:
        keep = _keep_from_absorb(check_mask(absorb, "absorb", shape=(b, t - 1), device=tokens.device))
    m, h = view.stream(tokens)
    return _update(view, tokens, view.first(_at(m, pos)), _at(h, pos), keep, pos)


def _patched_output(view: BlockView, update: ImplicitUpdate, m_q: Tensor, h_q: Tensor | None) -> Tensor:
    """The block's output at the query with ``W + ΔW`` and ``b′ + Δb′``, from its MLP input ``m_q (B, D)``.

    ``(W + u vᵀ/‖v‖²) m_q = W m_q + u (vᵀ m_q)/‖v‖²``: applied in factored form, so a stack of
    updates is evaluated in one batched call without copying the block.
    """
    coefficient = (m_q * update.v).sum(-1) * update.learning_rate  # (B,)
    pre = view.first(m_q)
    if update.stacked:
        pre = torch.addcmul(pre[:, None], update.u, coefficient[:, None, None])  # one pass over (B, P, H)
        h_q = None if h_q is None else h_q[:, None]
    else:
        pre = torch.addcmul(pre, update.u, coefficient[:, None])
    return view.finish(pre, h_q, update.delta_b)


def _check_update(update: object, view: BlockView, dtype: torch.dtype, name: str = "update") -> ImplicitUpdate:
    if not isinstance(update, ImplicitUpdate):
        raise TypeError(f"{name} must be an icl_lib.ImplicitUpdate, got {type(update).__name__}")
    hidden, width = view.first.out_features, view.first.in_features
    if update.u.shape[-1] != hidden or update.v.shape[-1] != width:
        raise ValueError(
            f"{name} has factors u (..., {update.u.shape[-1]}), v (..., {update.v.shape[-1]}) but the block's "
            f"first MLP weight is ({hidden}, {width}): the update was computed for another block"
        )
    if update.u.dtype != dtype:
        raise TypeError(f"{name} has dtype {update.u.dtype} but the block's parameters are {dtype}")
    if update.v.ndim != 2:
        raise ValueError(
            f"{name} has one reference v per kept token (a language model's kept_tokens patches): it applies to "
            "that model through forward_with_updates only"
        )
    return update


def forward_with_update(
    block: nn.Module, update: ImplicitUpdate, tokens_kept: Tensor, absent: Tensor | None = None
) -> Tensor:
    """The block's output at the query, run on the kept tokens with ``W + ΔW`` and ``b′ + Δb′``.

    Args:
        block: the block the update was computed for.
        update: from :func:`implicit_update` or :func:`implicit_trajectory`.
        tokens_kept: ``(B, T', D)``, ending with the query: the query alone ``(B, 1, D)`` when the
            whole context was absorbed.
        absent: optional boolean ``(B, T'-1)`` mask of context tokens of ``tokens_kept`` to treat
            as absent; pass the full prompt with ``absent=absorb`` for per-example subsets.

    Returns:
        ``(B, D_out)``, or ``(B, P, D_out)`` for a stacked update (one output per update).
    """
    view, dtype, tokens = _check_block_tokens(block, tokens_kept, "tokens_kept", min_length=1)
    update = _check_update(update, view, dtype)
    if tokens.shape[0] != update.v.shape[0]:
        raise ValueError(f"tokens_kept has batch size {tokens.shape[0]} but the update has {update.v.shape[0]}")
    keep = None
    if absent is not None:
        b, t, _ = tokens.shape
        keep = _keep_from_absorb(check_mask(absent, "absent", shape=(b, t - 1), device=tokens.device))
    m, h = view.stream(tokens, keep)
    return _patched_output(view, update, m[:, -1], None if h is None else h[:, -1])


def block_inputs(model: nn.Module, tokens: Tensor, *, attention_mask: Tensor | None = None) -> list[Tensor]:
    """The input tokens of every block of a stack, ``depth`` tensors ``(B, T, D)``.

    For a ``transformers`` causal LM, ``tokens`` are token ids ``(B, T)`` (optionally with an
    ``attention_mask``) and the result is the input hidden states of every decoder layer.
    """
    return network_of(model).block_inputs(tokens, attention_mask)


def network_update(
    model: nn.Module,
    tokens: Tensor,
    position: int | str = -1,
    *,
    attention_mask: Tensor | None = None,
    kept_tokens: int = 1,
    steering: str = "bias",
    factor_dtype: torch.dtype | None = None,
) -> list[ImplicitUpdate]:
    """One :class:`ImplicitUpdate` per block of a stack, from one forward pass with the context.

    Block ``ℓ`` sees block ``ℓ−1``'s outputs; its update absorbs its whole context, with the
    reference ``a`` computed from its own input at the query alone. With the default
    ``position=-1`` the list feeds :func:`forward_with_updates`; ``"all"`` gives every position.

    Args:
        model: an :class:`icl_lib.Transformer`, a ``torch.nn.TransformerEncoder``, an
            ``nn.Sequential`` / ``nn.ModuleList`` of supported blocks, or a ``transformers``
            causal LM of a supported family (:func:`icl_lib.supported_families`).
        tokens: the prompt ``(B, T, in_dim)``, ``T ≥ 2``; for a language model, token ids
            ``(B, T)`` (``torch.long``).
        position: the position whose output the patches reproduce (default the query), or
            ``"all"``.
        attention_mask: language models only: ``(B, T)`` of 0/1, 0 for left padding; position
            ids are counted over the real tokens, so a padded row gives what its prompt alone gives.
        kept_tokens: language models only: keep the last ``K`` tokens instead of the query alone.
            The context before them is absorbed and every kept token gets its own patch in every
            layer, with its own reference (``u (B, K, H_s)``, ``v (B, K, D)``):
            ``forward_with_updates(model, updates, input_ids[:, -K:])`` then reproduces the
            prompted logits. This is the theorem with ``Y`` = the context and ``C \\ Y`` = the
            kept tokens, at every kept position.
        steering: language models only: how the patched model takes ``Δb′``. ``"bias"``
            (default): added to the MLP's output. ``"down"``: as the rank-1 update
            ``ΔW_down = Δb′ cᵀ/‖c‖²`` of the MLP's last weight, ``c`` its input (the hidden
            activation) at the reproduced position, for a family that adds the MLP output as it
            is (Llama, Qwen, GPT-2, the parallel families). ``"norm"``: as the patch
            ``Δs = Δb′ ⊘ n`` of the scale of the norm after the MLP (Gemma 2/3, OLMo2), ``n`` the
            normalised MLP output there. Either way no vector is added: the context becomes
            weight patches only (Goldwaser et al., 2025). :func:`forward_with_updates` applies
            the steering the updates carry.
        factor_dtype: language models only: the dtype the factors are formed and stored in. By
            default float32 for a bfloat16 or float16 model (a factor is a difference of two
            nearby activations, which half precision would round a second time; the patched
            run adds it in float32 and rounds once), the model's dtype otherwise. Pass the
            model's half dtype to form them naively, in half precision.

    For a language model, each decoder layer's first MLP layer ``W_s`` stacks the linear maps
    that read the MLP input (``[W_gate; W_up]`` for a gated MLP), so ``u`` is ``(B, H_s)``;
    ``Δb′`` is added where the family adds the MLP's output (after Gemma's post-feed-forward
    norm). The computation is the model's own forward (``icl_lib.architectures.causal_lm``).
    """
    return network_of(model).network_update(tokens, position, attention_mask, kept_tokens, steering, factor_dtype)


def forward_with_updates(model: nn.Module, updates: Sequence[ImplicitUpdate], query: Tensor) -> Tensor:
    """The query alone through the stack, every block patched with its update.

    Args:
        model: the stack the updates were computed for.
        updates: from :func:`network_update` with the query position (one per block).
        query: ``(B, in_dim)`` or ``(B, 1, in_dim)``.

    For a ``transformers`` causal LM, ``query`` is the last token id alone, ``(B, 1)``
    (``input_ids[:, -1:]``), or the last ``K`` tokens for updates computed with
    ``kept_tokens=K``, embedded at the position ids the updates carry; the result is the logits
    ``(B, vocab)`` at the last token, equal to ``model(input_ids).logits[:, -1]``.

    Returns:
        ``(B, out_dim)``: equal to the model's prompted output at the query.
    """
    return network_of(model).forward_with_updates(updates, query)
