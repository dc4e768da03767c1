"""How the core sees a model: the one interface every architecture implements.

The theorem needs four *sites* in every block of a model: the MLP's first linear map(s)
``W_s`` (where ``ΔW`` goes), the MLP input ``m`` (read for ``δ = m − a`` and the reference
``a``), the residual stream ``h`` the MLP output is added to (read for ``Δb′``), and the point
where the MLP output is added to it (where ``Δb′`` goes). An *architecture* locates these sites
for the models it knows and runs the model's own computation with reads and patches there. The
core (``icl_lib.core.implicit``, ``icl_lib.core.trajectory``, ``icl_lib.core.analysis``)
only talks to these two interfaces:

* :class:`BlockView`: one block that runs alone on tokens ``(B, T, D)``, split at ``W``:
  ``stream`` computes everything up to the MLP input, ``finish`` everything after the first
  layer. The library's own :class:`icl_lib.Block` *is* ``finish(W m + b, stream(z))`` (its
  ``forward`` is written that way), so the view runs the block's own code.
* :class:`Network`: a whole model, its blocks fed by one another. It computes the updates of
  every block, runs the patched model and measures the gaps.

Two architectures are registered by ``icl_lib.architectures``: the library's own blocks and
PyTorch's encoder layers (``icl_lib.architectures.stacks``, functional views), and the
``transformers`` causal LMs (``icl_lib.architectures.causal_lm``, hooks at the named sites on
the model's own forward, one :class:`~icl_lib.architectures.families.DecoderFamily` per family).
The core imports neither; a model is matched by asking each registered architecture in turn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from .trajectory import NetworkTrajectory
    from .update import ImplicitUpdate

__all__ = ["Architecture", "BlockView", "Network", "register_architecture", "find_view", "view_of", "network_of"]


class BlockView(Protocol):
    """One block split at its first MLP layer.

    Attributes:
        first: the first layer: ``first(m (..., D)) -> (..., H)`` is ``W m + b``; it has
            ``in_features``, ``out_features``, ``weight (H, D)`` and ``bias``.
    """

    first: nn.Module

    def stream(self, tokens: Tensor, keep: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """``tokens (B, T, D)``, optional ``keep (B, T)`` bool -> ``(m (B, T, D), h (B, T, D) | None)``:
        the MLP input at every position and the residual stream (``None`` without residual)."""
        ...

    def finish(self, pre_activation: Tensor, h: Tensor | None, output_shift: Tensor | None = None) -> Tensor:
        """``pre = W m + b (..., H)`` -> the block's output ``(..., D_out)``; ``output_shift`` is ``Δb′``."""
        ...


class Network(Protocol):
    """A whole model seen through the theorem, block by block (see the public functions of the
    same names in ``icl_lib.core.implicit``, ``icl_lib.core.analysis`` and
    ``icl_lib.core.trajectory`` for the arguments)."""

    def network_update(
        self,
        tokens: Tensor,
        position: int | str,
        attention_mask: Tensor | None,
        kept_tokens: int,
        steering: str,
        factor_dtype: torch.dtype | None,
    ) -> list[ImplicitUpdate]: ...

    def forward_with_updates(self, updates: Sequence[ImplicitUpdate], query: Tensor) -> Tensor: ...

    def block_inputs(self, tokens: Tensor, attention_mask: Tensor | None) -> list[Tensor]: ...

    def block_gaps(
        self, tokens: Tensor, attention_mask: Tensor | None, position: int | str, relative: bool
    ) -> Tensor: ...

    def network_gap(self, tokens: Tensor, attention_mask: Tensor | None) -> Tensor: ...

    def trajectory(
        self,
        tokens: Tensor,
        attention_mask: Tensor | None,
        context_lengths: Sequence[int] | None,
        kept_tokens: int,
        logits: bool,
    ) -> NetworkTrajectory: ...


@dataclass(frozen=True)
class Architecture:
    """A kind of model the core can run.

    Attributes:
        name: what error messages list, e.g. ``"icl_lib.Block, torch.nn.TransformerEncoderLayer"``.
        view: ``module -> BlockView | None``: the view of one of this architecture's blocks,
            ``None`` for a module it does not know; it may raise a ``TypeError`` or
            ``ValueError`` naming why one of its modules cannot run alone.
        network: ``model -> Network | None``, the same for whole models.
    """

    name: str
    view: Callable[[nn.Module], BlockView | None]
    network: Callable[[nn.Module], Network | None]


_ARCHITECTURES: list[Architecture] = []


def register_architecture(architecture: Architecture) -> None:
    """Make the core accept the models of ``architecture`` (asked in order of registration)."""
    if not isinstance(architecture, Architecture):
        raise TypeError(f"expected an icl_lib.core.architecture.Architecture, got {type(architecture).__name__}")
    if any(a.name == architecture.name for a in _ARCHITECTURES):
        raise ValueError(f"an architecture named {architecture.name!r} is registered already")
    _ARCHITECTURES.append(architecture)


def _supported() -> str:
    return "; ".join(a.name for a in _ARCHITECTURES)


def find_view(module: object) -> BlockView | None:
    """The view of a block that runs alone, or ``None`` when no architecture knows it as a block."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(module).__name__}")
    for architecture in _ARCHITECTURES:
        view = architecture.view(module)
        if view is not None:
            return view
    return None


def view_of(block: object) -> BlockView:
    """The view of a supported block; a ``TypeError`` naming the supported kinds otherwise."""
    view = find_view(block)
    if view is None:
        raise TypeError(f"unsupported block type {type(block).__name__}; supported: {_supported()}")
    return view


def network_of(model: object) -> Network:
    """The network adapter of a supported model; a ``TypeError`` naming the supported kinds otherwise."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    for architecture in _ARCHITECTURES:
        network = architecture.network(model)
        if network is not None:
            return network
    raise TypeError(
        f"unsupported model type {type(model).__name__}; supported: {_supported()}. A transformers family "
        "the library does not know can be added with icl_lib.register_family"
    )
