"""How the implicit-update code sees a block: split at the first MLP weight ``W``.

A *view* of a block offers three things:

* ``first``: the ``nn.Linear`` holding ``W (H, D)`` and ``b (H,)``;
* ``stream(tokens (B, T, D), keep (B, T) | None) -> (m (B, T, D), h (B, T, D) | None)``: the
  MLP input ``m`` at every position and the residual stream ``h`` (``None`` without residual);
* ``finish(pre (..., H), h (..., D) | None, output_shift (..., D) | None) -> (..., D_out)``:
  ``f_θ`` and the residual addition, given ``pre = W m + b``; ``output_shift`` is added to the
  MLP's output bias ``b′``.

Two kinds of block are supported: :class:`icl_lib.Block` and PyTorch's own
``torch.nn.TransformerEncoderLayer`` (``batch_first=True``, either ``norm_first``, in eval mode,
run without an attention mask, as ``layer(tokens)`` runs it).
"""

from __future__ import annotations

from typing import Callable, Protocol

from torch import Tensor, nn

from .blocks import Block, Transformer

__all__ = ["BlockView", "view_of", "stack_of", "SUPPORTED_BLOCKS"]

SUPPORTED_BLOCKS = "icl_lib.Block or torch.nn.TransformerEncoderLayer(batch_first=True)"


class BlockView(Protocol):
    first: nn.Linear

    def stream(self, tokens: Tensor, keep: Tensor | None = None) -> tuple[Tensor, Tensor | None]: ...

    def finish(self, pre_activation: Tensor, h: Tensor | None, output_shift: Tensor | None = None) -> Tensor: ...


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


def view_of(block: nn.Module) -> BlockView:
    """The view of a supported block; ``TypeError`` / ``ValueError`` naming the problem otherwise."""
    if isinstance(block, Block):
        return _BlockView(block)
    if isinstance(block, nn.TransformerEncoderLayer):
        if not block.self_attn.batch_first:
            raise ValueError("the TransformerEncoderLayer must be built with batch_first=True")
        if block.training:
            raise ValueError("the TransformerEncoderLayer is in training mode (dropout is on); call .eval() first")
        return _EncoderLayerView(block)
    if type(block).__module__.startswith("transformers."):
        raise TypeError(
            f"a transformers {type(block).__name__} is not a standalone block: its layers need the model's "
            "positions and masks. Pass the whole causal LM to network_update, forward_with_updates, block_inputs, "
            "block_gaps, network_gap or implicit_trajectory"
        )
    raise TypeError(f"unsupported block type {type(block).__name__}; supported: {SUPPORTED_BLOCKS}")


def _identity(z: Tensor) -> Tensor:
    return z


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
    raise TypeError(
        f"unsupported model type {type(model).__name__}; supported stacks: icl_lib.Transformer, "
        "torch.nn.TransformerEncoder, nn.Sequential or nn.ModuleList of blocks"
    )

