"""Exact implicit weight updates: a context becomes a rank-1 patch of the first MLP weight.

Notation (Dherin et al., 2025; for residual blocks, Innocenti & Achour, 2025). A block's MLP
input at a position is ``m`` (``A(z)`` for a plain block,
``h`` or ``LN₂ h`` for residual blocks), ``W (H, D)`` is the first MLP weight. With ``a`` the MLP
input at the query when the absorbed tokens are absent, and ``m_p`` the MLP input at position
``p`` of the full prompt,

    ΔW = (W δ) aᵀ / ‖a‖²,   δ = m_p − a,         Δb′ = h_p − h_a (residual blocks only),

and the block run on the kept tokens with ``W + ΔW`` (and ``b′ + Δb′``) gives, at the query,
exactly the prompted output at position ``p``. We store the two factors ``u = W δ`` and
``v = a``; the dense ``ΔW`` exists only if :attr:`ImplicitUpdate.delta_W` is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from .checks import check_mask, check_position, check_rows, check_tokens, module_dtype_device
from .decoders import is_language_model
from .views import BlockView, stack_of, view_of

__all__ = [
    "ImplicitUpdate",
    "implicit_update",
    "forward_with_update",
    "network_update",
    "forward_with_updates",
    "block_inputs",
]


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
    """

    u: Tensor
    v: Tensor
    delta_b: Tensor | None
    position: int | None
    n_tokens: int
    position_ids: Tensor | None = None

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
                       position_ids=pick(self.position_ids))


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


def _check_stack_tokens(model: nn.Module, tokens: object, name: str, min_length: int):
    embed, blocks, head = stack_of(model)
    views = [view_of(block) for block in blocks]
    dtype, device = module_dtype_device(model)
    width = getattr(model, "in_dim", views[0].first.in_features)
    if isinstance(tokens, Tensor) and tokens.ndim == 2 and min_length == 1:
        tokens = tokens[:, None]  # a query given as (B, D)
    tokens = check_tokens(tokens, name, width=width, dtype=dtype, device=device, min_length=min_length)
    return embed, blocks, views, head, tokens


def _no_mask_for_stacks(attention_mask: Tensor | None) -> None:
    if attention_mask is not None:
        raise ValueError(
            "attention_mask is for transformers language models; the library's own stacks take every token "
            "(absent tokens of a single block go through implicit_update's absorb mask)"
        )


def block_inputs(model: nn.Module, tokens: Tensor, *, attention_mask: Tensor | None = None) -> list[Tensor]:
    """The input tokens of every block of a stack, ``depth`` tensors ``(B, T, D)``.

    For a ``transformers`` causal LM, ``tokens`` are token ids ``(B, T)`` (optionally with an
    ``attention_mask``) and the result is the input hidden states of every decoder layer.
    """
    if is_language_model(model):
        from .language_models import lm_block_inputs

        return lm_block_inputs(model, tokens, attention_mask)
    _no_mask_for_stacks(attention_mask)
    embed, blocks, _, _, tokens = _check_stack_tokens(model, tokens, "tokens", min_length=1)
    inputs = [embed(tokens)]
    for block in blocks[:-1]:
        inputs.append(block(inputs[-1]))
    return inputs


def network_update(
    model: nn.Module,
    tokens: Tensor,
    position: int | str = -1,
    *,
    attention_mask: Tensor | None = None,
    kept_tokens: int = 1,
) -> list[ImplicitUpdate]:
    """One :class:`ImplicitUpdate` per block of a stack, from one forward pass with the context.

    Block ``ℓ`` sees block ``ℓ−1``'s outputs; its update absorbs its whole context, with the
    reference ``a`` computed from its own input at the query alone. With the default
    ``position=-1`` the list feeds :func:`forward_with_updates`; ``"all"`` gives every position.

    Args:
        model: an :class:`icl_lib.Transformer`, a ``torch.nn.TransformerEncoder``, an
            ``nn.Sequential`` / ``nn.ModuleList`` of supported blocks, or a ``transformers``
            causal LM (:data:`icl_lib.decoders.SUPPORTED_LANGUAGE_MODELS`).
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

    For a language model, each decoder layer's gated MLP has first layer ``W_s = [W_gate; W_up]``,
    so ``u`` is ``(B, 2H)``; ``Δb′`` is added after the MLP (after Gemma's post-feed-forward norm).
    The computation is the model's own forward (see the module ``icl_lib.language_models``).
    """
    if is_language_model(model):
        from .language_models import lm_network_update

        return lm_network_update(model, tokens, position, attention_mask, kept_tokens)
    _no_mask_for_stacks(attention_mask)
    if kept_tokens != 1:
        raise ValueError("kept_tokens is for transformers language models; a block's partial contexts go through "
                         "implicit_update's absorb mask")
    embed, _, views, _, tokens = _check_stack_tokens(model, tokens, "tokens", min_length=2)
    pos = check_position(position, tokens.shape[1])
    z = embed(tokens)
    updates = []
    for i, view in enumerate(views):
        m, h = view.stream(z)
        pre = view.first(m)  # W m + b at every position: the forward pass and the updates share it
        updates.append(_update(view, z, _at(pre, pos), _at(h, pos), None, pos))
        if i + 1 < len(views):  # the last block's output feeds no update: skip the rest of its MLP
            z = view.finish(pre, h)
    return updates


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
    if is_language_model(model):
        from .language_models import lm_forward_with_updates

        return lm_forward_with_updates(model, updates, query)
    embed, blocks, _, head, query = _check_stack_tokens(model, query, "query", min_length=1)
    if query.shape[1] != 1:
        raise ValueError(f"query must be one token, (B, in_dim) or (B, 1, in_dim); got {tuple(query.shape)}")
    if not isinstance(updates, Sequence) or len(updates) != len(blocks):
        got = len(updates) if isinstance(updates, Sequence) else type(updates).__name__
        raise ValueError(f"updates must be a sequence of one ImplicitUpdate per block ({len(blocks)}), got {got}")
    for i, update in enumerate(updates):
        if isinstance(update, ImplicitUpdate) and (update.stacked or update.position != update.n_tokens - 1):
            raise ValueError(
                f"updates[{i}] reproduces position {update.position} of a {update.n_tokens}-token prompt, not the "
                "query: a patched stack runs the query alone, so it needs network_update(..., position=-1)"
            )
    z = embed(query)
    for block, update in zip(blocks, updates):
        z = forward_with_update(block, update, z)[:, None]
    return head(z[:, 0])
