"""The library's own blocks and PyTorch's encoder layers: their views, and stacks of them.

A *view* of a block (:class:`icl_lib.core.architecture.BlockView`) offers three things:

* ``first``: the ``nn.Linear`` holding ``W (H, D)`` and ``b (H,)``;
* ``stream(tokens (B, T, D), keep (B, T) | None) -> (m (B, T, D), h (B, T, D) | None)``: the
  MLP input ``m`` at every position and the residual stream ``h`` (``None`` without residual);
* ``finish(pre (..., H), h (..., D) | None, output_shift (..., D) | None) -> (..., D_out)``:
  ``f_θ`` and the residual addition, given ``pre = W m + b``; ``output_shift`` is added to the
  MLP's output bias ``b′``.

Two kinds of block are supported: :class:`icl_lib.Block` and PyTorch's own
``torch.nn.TransformerEncoderLayer`` (``batch_first=True``, either ``norm_first``, in eval mode,
run without an attention mask, as ``layer(tokens)`` runs it). The sites of the theorem are the
view's seams: ``stream`` ends at the MLP input ``m`` and returns the residual stream ``h``,
``first`` is ``W_s``, and ``finish`` adds ``Δb′`` to the MLP output before the residual addition.

Why views and not hooks, as for ``transformers`` models: these blocks run *alone* on tokens,
and the theorem's partial contexts (``implicit_update(..., absorb=...)``) and token-by-token
trajectories run a batch of prompts with different absent tokens in one call, through a
``keep`` mask that the blocks' own contextual layers take. :class:`icl_lib.Block`'s ``forward``
is ``finish(W m + b, *stream(z))``, so the view runs the block's own code, and the updates of a
stack share its prompted pass (``W m + b`` is computed once), with no per-call hook overhead at
the small sizes of the book's experiments.

A stack (:class:`StackNetwork`) is an :class:`icl_lib.Transformer`, a
``torch.nn.TransformerEncoder``, or an ``nn.Sequential`` / ``nn.ModuleList`` of such blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ..core.architecture import Architecture, BlockView, register_architecture
from ..core.checks import check_position, check_tokens, module_dtype_device
from ..core.implicit import _at, _update, forward_with_update, implicit_update
from ..core.update import ImplicitUpdate
from .blocks import Block, Transformer

__all__ = ["StackNetwork", "block_view", "stack_of", "SUPPORTED_BLOCKS", "SUPPORTED_STACKS"]

SUPPORTED_BLOCKS = "icl_lib.Block or torch.nn.TransformerEncoderLayer(batch_first=True)"
SUPPORTED_STACKS = "icl_lib.Transformer, torch.nn.TransformerEncoder, nn.Sequential or nn.ModuleList of blocks"


class _EncoderLayerView:
    """``torch.nn.TransformerEncoderLayer`` seen through its submodules.

    Post-LN (default): ``h = LN₁(z + SA(z))``, ``out = LN₂(h + FF(h))``: the MLP input is ``h``.
    Pre-LN (``norm_first``): ``h = z + SA(LN₁ z)``, ``out = h + FF(LN₂ h)``.
    Dropout is the identity because the layer must be in eval mode.
    """

    def __init__(self, layer: nn.TransformerEncoderLayer):
        self.layer = layer
        self.first = layer.linear1

    def _attend(self, z: Tensor, keep: Tensor | None) -> Tensor:
        padding = None if keep is None else ~keep
        return self.layer.self_attn(z, z, z, key_padding_mask=padding, need_weights=False)[0]

    def stream(self, tokens: Tensor, keep: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        layer = self.layer
        if layer.norm_first:
            h = tokens + self._attend(layer.norm1(tokens), keep)
            return layer.norm2(h), h
        h = layer.norm1(tokens + self._attend(tokens, keep))
        return h, h

    def finish(self, pre_activation: Tensor, h: Tensor | None, output_shift: Tensor | None = None) -> Tensor:
        layer = self.layer
        ff = layer.linear2(layer.activation(pre_activation))
        if output_shift is not None:
            ff = ff + output_shift
        return h + ff if layer.norm_first else layer.norm2(h + ff)


class _BlockView:
    """:class:`icl_lib.Block` already exposes ``stream`` and ``finish``."""

    def __init__(self, block: Block):
        self.first = block.mlp.up
        self.stream = block.stream
        self.finish = block.finish


def block_view(block: nn.Module) -> BlockView | None:
    """The view of an :class:`icl_lib.Block` or a ``TransformerEncoderLayer``, ``None`` for another
    module; ``ValueError`` for an encoder layer that cannot be viewed (not batch-first, in training)."""
    if isinstance(block, Block):
        return _BlockView(block)
    if isinstance(block, nn.TransformerEncoderLayer):
        if not block.self_attn.batch_first:
            raise ValueError("the TransformerEncoderLayer must be built with batch_first=True")
        if block.training:
            raise ValueError("the TransformerEncoderLayer is in training mode (dropout is on); call .eval() first")
        return _EncoderLayerView(block)
    return None


def _identity(z: Tensor) -> Tensor:
    return z


def _is_stack(model: nn.Module) -> bool:
    return isinstance(model, (Transformer, nn.TransformerEncoder, nn.Sequential, nn.ModuleList))


def stack_of(model: nn.Module) -> tuple[Callable[[Tensor], Tensor], list[nn.Module], Callable[[Tensor], Tensor]]:
    """Split a stack into ``(embed, blocks, head)``.

    Supported: :class:`icl_lib.Transformer`; ``torch.nn.TransformerEncoder`` (its final norm, if
    any, is the head); ``nn.Sequential`` / ``nn.ModuleList`` of supported blocks.
    """
    if isinstance(model, Transformer):
        return model.embed, list(model.blocks), model.head
    if isinstance(model, nn.TransformerEncoder):
        return _identity, list(model.layers), _identity if model.norm is None else model.norm
    if isinstance(model, (nn.Sequential, nn.ModuleList)):
        blocks = list(model)
        if not blocks:
            raise ValueError("the stack is empty")
        for i, block in enumerate(blocks):
            if not isinstance(block, (Block, nn.TransformerEncoderLayer)):
                raise TypeError(f"stack element {i} is a {type(block).__name__}; supported blocks: {SUPPORTED_BLOCKS}")
        return _identity, blocks, _identity
    raise TypeError(f"unsupported model type {type(model).__name__}; supported stacks: {SUPPORTED_STACKS}")


def _no_mask(attention_mask: Tensor | None) -> None:
    if attention_mask is not None:
        raise ValueError(
            "attention_mask is for transformers language models; the library's own stacks take every token "
            "(absent tokens of a single block go through implicit_update's absorb mask)"
        )


class StackNetwork:
    """A stack of viewed blocks as a :class:`icl_lib.core.architecture.Network`: block by block."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.embed, self.blocks, self.head = stack_of(model)
        self.views = [block_view(block) for block in self.blocks]

    def _tokens(self, tokens: object, name: str, min_length: int) -> Tensor:
        dtype, device = module_dtype_device(self.model)
        width = getattr(self.model, "in_dim", self.views[0].first.in_features)
        if isinstance(tokens, Tensor) and tokens.ndim == 2 and min_length == 1:
            tokens = tokens[:, None]  # a query given as (B, D)
        return check_tokens(tokens, name, width=width, dtype=dtype, device=device, min_length=min_length)

    def block_inputs(self, tokens: Tensor, attention_mask: Tensor | None) -> list[Tensor]:
        _no_mask(attention_mask)
        inputs = [self.embed(self._tokens(tokens, "tokens", min_length=1))]
        for block in self.blocks[:-1]:
            inputs.append(block(inputs[-1]))
        return inputs

    def network_update(
        self,
        tokens: Tensor,
        position: int | str,
        attention_mask: Tensor | None,
        kept_tokens: int,
        steering: str,
        factor_dtype: torch.dtype | None,
    ) -> list[ImplicitUpdate]:
        _no_mask(attention_mask)
        if factor_dtype is not None:
            raise ValueError("factor_dtype is for transformers language models; a block's factors are in its dtype")
        if steering != "bias":
            raise ValueError("steering is for transformers language models; the library's blocks have an MLP output "
                             "bias b′, which Δb′ shifts")
        if kept_tokens != 1:
            raise ValueError("kept_tokens is for transformers language models; a block's partial contexts go "
                             "through implicit_update's absorb mask")
        tokens = self._tokens(tokens, "tokens", min_length=2)
        pos = check_position(position, tokens.shape[1])
        z = self.embed(tokens)
        updates = []
        for i, view in enumerate(self.views):
            m, h = view.stream(z)
            pre = view.first(m)  # W m + b at every position: the forward pass and the updates share it
            updates.append(_update(view, z, _at(pre, pos), _at(h, pos), None, pos))
            if i + 1 < len(self.views):  # the last block's output feeds no update: skip the rest of its MLP
                z = view.finish(pre, h)
        return updates

    def forward_with_updates(self, updates: Sequence[ImplicitUpdate], query: Tensor) -> Tensor:
        query = self._tokens(query, "query", min_length=1)
        if query.shape[1] != 1:
            raise ValueError(f"query must be one token, (B, in_dim) or (B, 1, in_dim); got {tuple(query.shape)}")
        if not isinstance(updates, Sequence) or len(updates) != len(self.blocks):
            got = len(updates) if isinstance(updates, Sequence) else type(updates).__name__
            raise ValueError(f"updates must be a sequence of one ImplicitUpdate per block ({len(self.blocks)}), got {got}")
        for i, update in enumerate(updates):
            if isinstance(update, ImplicitUpdate) and (update.stacked or update.position != update.n_tokens - 1):
                raise ValueError(
                    f"updates[{i}] reproduces position {update.position} of a {update.n_tokens}-token prompt, not "
                    "the query: a patched stack runs the query alone, so it needs network_update(..., position=-1)"
                )
        z = self.embed(query)
        for block, update in zip(self.blocks, updates):
            z = forward_with_update(block, update, z)[:, None]
        return self.head(z[:, 0])

    def block_gaps(self, tokens: Tensor, attention_mask: Tensor | None, position: int | str, relative: bool) -> Tensor:
        _no_mask(attention_mask)
        if isinstance(tokens, Tensor) and tokens.ndim == 3 and tokens.shape[1] < 2:
            raise ValueError(f"tokens hold {tokens.shape[1]} token(s): the context is empty; need T ≥ 2")
        inputs = self.block_inputs(tokens, None)
        pos = check_position(position, inputs[0].shape[1])
        gaps = []
        for block, z in zip(self.blocks, inputs):
            update = implicit_update(block, z, position="all" if pos is None else pos)
            patched = forward_with_update(block, update, z[:, -1:])
            prompted = block(z) if pos is None else block(z)[:, pos]
            gap = (prompted - patched).norm(dim=-1)
            gaps.append(gap / prompted.norm(dim=-1) if relative else gap)
        return torch.stack(gaps, dim=1)

    def network_gap(self, tokens: Tensor, attention_mask: Tensor | None) -> Tensor:
        _no_mask(attention_mask)
        updates = self.network_update(tokens, -1, None, 1, "bias", None)
        patched = self.forward_with_updates(updates, tokens[:, -1])
        return (self.model(tokens)[:, -1] - patched).norm(dim=-1)

    def trajectory(self, tokens, attention_mask, context_lengths, kept_tokens, logits):
        raise TypeError(
            f"implicit_trajectory takes one block ({SUPPORTED_BLOCKS}) or a transformers causal LM, not a "
            f"{type(self.model).__name__}: run it on each block of the stack"
        )


register_architecture(
    Architecture(
        name=f"blocks: {SUPPORTED_BLOCKS}; stacks: {SUPPORTED_STACKS}",
        view=block_view,
        network=lambda model: StackNetwork(model) if _is_stack(model) else None,
    )
)
