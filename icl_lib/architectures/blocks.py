"""Contextual blocks ``T_W = M_W ∘ A`` and stacks of them.

A block is split at the first dense layer of its MLP, the layer whose weight ``W`` the
theorem updates:

* :meth:`Block.stream` computes everything *before* it: the MLP input ``m`` at every position
  (``A(z)``, or ``h``, or ``LN₂ h``) and the residual stream ``h`` (``None`` without residual);
* :meth:`Block.finish` computes everything *after* it (``f_θ``): activation, second dense
  layer, residual addition.

``Block.forward`` is literally ``finish(W m + b, h)``, so the implicit-update code, which
uses the same two methods, sees exactly the computation the block performs.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from .contextual import LinearAttention, RecurrentLayer, SelfAttention

__all__ = ["MLP", "Block", "Transformer", "ACTIVATIONS", "CONTEXTUAL_LAYERS"]

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "identity": nn.Identity}
CONTEXTUAL_LAYERS = ("softmax", "linear", "recurrent")
Activation = Literal["relu", "gelu", "tanh", "identity"]


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _contextual_layer(kind: str, dim: int, n_heads: int, causal: bool) -> nn.Module:
    if kind == "softmax":
        return SelfAttention(dim, n_heads, causal=causal)
    if kind == "linear":
        if not causal:
            raise ValueError("the linear-attention layer is causal only; pass causal=True")
        return LinearAttention(dim, n_heads)
    if kind == "recurrent":
        if not causal:
            raise ValueError("the recurrent layer is causal by nature; pass causal=True")
        return RecurrentLayer(dim)
    raise ValueError(f"unknown contextual layer {kind!r}; choose one of {CONTEXTUAL_LAYERS}")


class MLP(nn.Module):
    """``M(m) = W_out φ(W m + b) + b′``.

    ``up`` holds ``W (hidden, dim)`` and ``b (hidden,)``: the weight the theorem updates.
    ``down`` holds ``W_out (out_dim, hidden)`` and ``b′ (out_dim,)``.

    Shapes: ``(..., dim) -> (..., out_dim)``.
    """

    def __init__(self, dim: int, hidden: int, out_dim: int | None = None, activation: Activation = "relu"):
        super().__init__()
        if dim < 1 or hidden < 1:
            raise ValueError(f"dim and hidden must be positive, got dim={dim}, hidden={hidden}")
        self.up = nn.Linear(dim, hidden)
        self.act = _activation(activation)
        self.down = nn.Linear(hidden, dim if out_dim is None else out_dim)

    def tail(self, pre_activation: Tensor, output_shift: Tensor | None = None) -> Tensor:
        """``f_θ``: everything after the first dense layer. ``(..., hidden) -> (..., out_dim)``.

        ``output_shift`` is added to the output bias ``b′`` (the theorem's ``Δb′``).
        """
        out = self.down(self.act(pre_activation))
        return out if output_shift is None else out + output_shift

    def forward(self, m: Tensor) -> Tensor:
        return self.tail(self.up(m))


class Block(nn.Module):
    """A contextual block: a contextual layer followed by an MLP.

    Three variants, as in the paper and its follow-up (``z`` the input tokens):

    * plain (``residual=False``): ``out = M(A(z))``: the paper's ``T_W = M_W ∘ A``;
    * residual: ``h = z + A(z)``, ``out = h + M(h)``;
    * pre-LN residual (``layer_norm=True``): ``h = z + A(LN₁ z)``, ``out = h + M(LN₂ h)``.

    Args:
        dim: token width D (also the output width).
        hidden: MLP width H.
        n_heads: attention heads (for the attention layers).
        residual: add the residual connections.
        layer_norm: pre-LN; requires ``residual=True``.
        causal: causal attention mask.
        activation: the MLP nonlinearity, one of ``relu``, ``gelu``, ``tanh``, ``identity``.
        contextual: ``"softmax"`` (default), ``"linear"``, ``"recurrent"``, or any module
            with ``forward(tokens (B, T, D), keep (B, T) | None) -> (B, T, D)``.

    Shapes: ``forward(tokens (B, T, D), keep (B, T) bool | None) -> (B, T, D)``.
    """

    def __init__(
        self,
        dim: int,
        hidden: int,
        n_heads: int = 1,
        residual: bool = False,
        layer_norm: bool = False,
        *,
        causal: bool = True,
        activation: Activation = "relu",
        contextual: str | nn.Module = "softmax",
    ):
        super().__init__()
        if layer_norm and not residual:
            raise ValueError("layer_norm=True builds a pre-LN residual block; it requires residual=True")
        self.dim, self.hidden, self.residual, self.layer_norm = dim, hidden, residual, layer_norm
        if isinstance(contextual, nn.Module):
            self.attn = contextual
        else:
            self.attn = _contextual_layer(contextual, dim, n_heads, causal)
        self.ln1 = nn.LayerNorm(dim) if layer_norm else nn.Identity()
        self.ln2 = nn.LayerNorm(dim) if layer_norm else nn.Identity()
        self.mlp = MLP(dim, hidden, activation=activation)

    def stream(self, tokens: Tensor, keep: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Everything before the first MLP layer.

        Returns ``m (B, T, D)``, the MLP input at every position, and the residual stream
        ``h (B, T, D)`` (``None`` for a plain block).
        """
        mixed = self.attn(self.ln1(tokens), keep)
        if not self.residual:
            return mixed, None
        h = tokens + mixed
        return self.ln2(h), h

    def finish(self, pre_activation: Tensor, h: Tensor | None, output_shift: Tensor | None = None) -> Tensor:
        """Everything after the first MLP layer: ``(..., H) -> (..., D)``, adding ``h`` if residual."""
        out = self.mlp.tail(pre_activation, output_shift)
        return out if h is None else h + out

    def forward(self, tokens: Tensor, keep: Tensor | None = None) -> Tensor:
        m, h = self.stream(tokens, keep)
        return self.finish(self.mlp.up(m), h)


class Transformer(nn.Module):
    """A stack of blocks with an optional input embedding and a read-out.

    ``tokens (B, T, in_dim) -> embed -> block_1 .. block_depth -> LN -> readout -> (B, T, out_dim)``.
    The embedding is the identity when ``in_dim`` is None (tokens already have width ``dim``);
    the final LayerNorm is present when ``layer_norm``; ``out_dim`` defaults to ``dim``.
    Other keyword arguments go to every :class:`Block`.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        hidden: int,
        n_heads: int = 1,
        residual: bool = True,
        layer_norm: bool = True,
        *,
        in_dim: int | None = None,
        out_dim: int | None = None,
        causal: bool = True,
        activation: Activation = "relu",
        contextual: str = "softmax",
    ):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.dim, self.in_dim = dim, dim if in_dim is None else in_dim
        self.embed = nn.Identity() if in_dim is None else nn.Linear(in_dim, dim)
        self.blocks = nn.ModuleList(
            Block(dim, hidden, n_heads, residual, layer_norm, causal=causal, activation=activation, contextual=contextual)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim) if layer_norm else nn.Identity()
        self.readout = nn.Linear(dim, dim if out_dim is None else out_dim)

    def head(self, z: Tensor) -> Tensor:
        """The read-out after the last block: ``(..., dim) -> (..., out_dim)``."""
        return self.readout(self.norm(z))

    def forward(self, tokens: Tensor) -> Tensor:
        z = self.embed(tokens)
        for block in self.blocks:
            z = block(z)
        return self.head(z)

