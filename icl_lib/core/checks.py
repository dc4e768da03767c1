"""Input validation shared by the public API.

Every check runs before any arithmetic and raises ``TypeError`` (wrong kind of object) or
``ValueError`` (right kind, wrong content) with a message that names the argument and the
problem. Nothing is adjusted silently.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["all_finite", "check_tokens", "check_mask", "check_position", "check_rows", "module_dtype_device"]

FLOAT_DTYPES = (torch.float32, torch.float64)


def check_rows(index: object, what: str) -> Tensor:
    """``index`` as given, if it is a 1-d integer tensor picking rows (``what`` names them)."""
    if not isinstance(index, Tensor) or index.ndim != 1 or index.dtype == torch.bool:
        raise ValueError(f"index must be a 1-d integer tensor of {what}")
    return index


def all_finite(x: Tensor) -> bool:
    """Whether every entry of ``x`` (any shape) is finite, in one reduction in the usual case.

    A NaN or infinite entry makes the sum NaN or infinite, so a finite sum proves every entry
    finite without the entrywise test (which builds two boolean tensors of ``x``'s size). Only a
    non-finite sum, which finite entries can also give by overflowing, falls back to that test.
    """
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


def module_dtype_device(module: nn.Module) -> tuple[torch.dtype, torch.device]:
    """The dtype and device of a module's parameters (all must agree)."""
    params = list(module.parameters())
    if not params:
        raise ValueError(f"{type(module).__name__} has no parameters")
    dtype, device = params[0].dtype, params[0].device
    if any(p.dtype != dtype or p.device != device for p in params):
        dtypes = {p.dtype for p in params}
        devices = {p.device for p in params}
        raise ValueError(f"{type(module).__name__} mixes parameter dtypes {dtypes} or devices {devices}")
    return dtype, device


def check_tokens(
    tokens: object,
    name: str,
    *,
    width: int,
    dtype: torch.dtype,
    device: torch.device,
    min_length: int = 1,
    batch: int | None = None,
) -> Tensor:
    """Validate a ``(B, T, width)`` token tensor against a module's dtype and device."""
    if not isinstance(tokens, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tokens).__name__}")
    if tokens.ndim != 3:
        raise ValueError(f"{name} must have shape (B, T, D), got a {tokens.ndim}-d tensor of shape {tuple(tokens.shape)}")
    b, t, d = tokens.shape
    if d != width:
        raise ValueError(f"{name} has token width D={d} but the module expects D={width}")
    if b == 0:
        raise ValueError(f"{name} has an empty batch (B=0)")
    if batch is not None and b != batch:
        raise ValueError(f"{name} has batch size {b} but the update was computed for batch size {batch}")
    if t < min_length:
        if min_length == 2:
            raise ValueError(f"{name} holds {t} token(s): the context is empty; need at least one context token before the query")
        raise ValueError(f"{name} holds {t} token(s); need at least {min_length}")
    if tokens.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} has dtype {tokens.dtype}; use torch.float32 or torch.float64")
    if tokens.dtype != dtype:
        raise TypeError(f"{name} has dtype {tokens.dtype} but the module's parameters are {dtype}")
    if tokens.device != device:
        raise ValueError(f"{name} is on device {tokens.device} but the module is on {device}")
    if not all_finite(tokens):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return tokens


def check_mask(mask: object, name: str, *, shape: tuple[int, int], device: torch.device) -> Tensor:
    """Validate a boolean ``(B, N)`` mask over the context tokens."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a boolean torch.Tensor of shape (B, T-1), got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must have dtype torch.bool, got {mask.dtype}")
    if tuple(mask.shape) != shape:
        raise ValueError(f"{name} must have shape (B, T-1) = {shape} (one entry per context token), got {tuple(mask.shape)}")
    if mask.device != device:
        raise ValueError(f"{name} is on device {mask.device} but the tokens are on {device}")
    return mask


def check_position(position: object, length: int) -> int | None:
    """Validate ``position``: an int in ``[-T, T)`` or the string ``"all"`` (returned as None)."""
    if isinstance(position, str):
        if position != "all":
            raise ValueError(f"position must be an int or 'all', got {position!r}")
        return None
    if isinstance(position, bool) or not isinstance(position, int):
        raise TypeError(f"position must be an int or 'all', got {type(position).__name__}")
    if not -length <= position < length:
        raise ValueError(f"position {position} is out of range for a prompt of T={length} tokens")
    return position % length
