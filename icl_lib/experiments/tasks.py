"""The in-context linear regression task (Garg et al., 2022), as used by Dherin et al. (2025).

One *task* is a weight vector ``w ~ N(0, I_d)``. Its prompt holds ``N`` labelled examples
``c_j = (x_j, y_j)`` with ``x_j ~ N(0, I_d)`` and ``y_j = ⟨w, x_j⟩`` (no noise), followed by the
query token ``(x_q, 0)``: the label slot of the query is zero, and the model's prediction
``ŷ`` is the *last coordinate* of its output at the query. Tokens have width ``d + 1``.
The loss is ``½ · mean (ŷ − y_q)²``; the zero predictor scores ``½ E[y_q²] = d / 2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["RegressionBatch", "sample_regression", "regression_tokens", "read_prediction", "regression_loss"]


def _check_count(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def _check_float_tensor(value: object, name: str, ndim: int, shape_text: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape_text}, got {type(value).__name__}")
    if value.ndim != ndim:
        raise ValueError(f"{name} must have shape {shape_text}, got shape {tuple(value.shape)}")
    if value.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name} has dtype {value.dtype}; use torch.float32 or torch.float64")
    if not torch.isfinite(value).all():
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return value


@dataclass(frozen=True)
class RegressionBatch:
    """A batch of ``B`` regression prompts with ``N`` context examples each, in dimension ``d``.

    Attributes:
        tokens: ``(B, N + 1, d + 1)``: rows ``(x_j, y_j)`` then the query row ``(x_q, 0)``.
        targets: ``(B,)``, the query labels ``y_q = ⟨w, x_q⟩``.
        weights: ``(B, d)``, the task vectors ``w``.
        x_context: ``(B, N, d)``; y_context: ``(B, N)``; x_query: ``(B, d)``.
    """

    tokens: Tensor
    targets: Tensor
    weights: Tensor
    x_context: Tensor
    y_context: Tensor
    x_query: Tensor

    @property
    def n_context(self) -> int:
        """``N``, the number of context examples."""
        return self.x_context.shape[1]

    @property
    def dim(self) -> int:
        """``d``, the input dimension (tokens have width ``d + 1``)."""
        return self.x_context.shape[2]

    def truncated(self, n: int) -> "RegressionBatch":
        """The same tasks and queries with only the first ``n`` context examples, ``0 ≤ n ≤ N``."""
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= self.n_context:
            raise ValueError(f"n must be an int in [0, {self.n_context}], got {n!r}")
        x, y = self.x_context[:, :n], self.y_context[:, :n]
        return RegressionBatch(regression_tokens(x, y, self.x_query), self.targets, self.weights, x, y, self.x_query)


def regression_tokens(x_context: Tensor, y_context: Tensor, x_query: Tensor) -> Tensor:
    """Prompt tokens ``[(x_1, y_1), .., (x_N, y_N), (x_q, 0)]`` from given examples and query.

    Args:
        x_context: ``(B, N, d)`` (``N = 0`` allowed: the prompt is the query alone).
        y_context: ``(B, N)``.
        x_query: ``(B, d)``.

    Returns:
        ``(B, N + 1, d + 1)``, dtype and device of the inputs.
    """
    x_context = _check_float_tensor(x_context, "x_context", 3, "(B, N, d)")
    y_context = _check_float_tensor(y_context, "y_context", 2, "(B, N)")
    x_query = _check_float_tensor(x_query, "x_query", 2, "(B, d)")
    b, n, d = x_context.shape
    if d < 1:
        raise ValueError("x_context has input dimension d = 0")
    if tuple(y_context.shape) != (b, n):
        raise ValueError(f"y_context must have shape (B, N) = {(b, n)}, got {tuple(y_context.shape)}")
    if tuple(x_query.shape) != (b, d):
        raise ValueError(f"x_query must have shape (B, d) = {(b, d)}, got {tuple(x_query.shape)}")
    for name, t in (("y_context", y_context), ("x_query", x_query)):
        if t.dtype != x_context.dtype or t.device != x_context.device:
            raise TypeError(
                f"{name} is {t.dtype} on {t.device} but x_context is {x_context.dtype} on {x_context.device}"
            )
    context = torch.cat([x_context, y_context[..., None]], dim=-1)
    query = torch.cat([x_query, x_query.new_zeros(b, 1)], dim=-1)[:, None]
    return torch.cat([context, query], dim=1)


def sample_regression(
    batch: int,
    n_context: int,
    dim: int,
    *,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> RegressionBatch:
    """Draw ``batch`` independent tasks, each with ``n_context`` examples and one query.

    All randomness comes from ``generator`` (a seeded ``torch.Generator`` on ``device``), drawn
    in float64 and then cast, so the same seed gives the same tasks in float32 and float64.
    """
    batch = _check_count(batch, "batch", 1)
    n_context = _check_count(n_context, "n_context", 0)
    dim = _check_count(dim, "dim", 1)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    device = torch.device(device)
    if generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but device is {device}")
    draw = dict(generator=generator, dtype=torch.float64, device=device)
    w = torch.randn(batch, dim, **draw)
    x = torch.randn(batch, n_context + 1, dim, **draw)
    y = torch.einsum("bnd,bd->bn", x, w)
    w, x, y = w.to(dtype), x.to(dtype), y.to(dtype)
    x_context, x_query = x[:, :n_context], x[:, n_context]
    y_context, targets = y[:, :n_context], y[:, n_context]
    tokens = regression_tokens(x_context, y_context, x_query)
    return RegressionBatch(tokens, targets, w, x_context, y_context, x_query)


def read_prediction(output: Tensor) -> Tensor:
    """The prediction ``ŷ``: the last coordinate of a block's output *at the query*.

    ``(..., d + 1) -> (...)``: e.g. ``(B, d + 1)`` from :func:`icl_lib.forward_with_update`, or
    ``(B, P, d + 1)`` from a stacked update (one prediction per update). For the output of a
    block on a whole prompt, ``(B, T, d + 1)``, first select the query: ``output[:, -1]``.
    """
    if not isinstance(output, Tensor) or output.ndim < 1 or output.shape[-1] < 2:
        got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(f"output must have shape (..., d + 1) with d ≥ 1, got {got}")
    return output[..., -1]


def regression_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """``½ · mean (ŷ − y)²`` over all entries; a scalar tensor (differentiable)."""
    if not isinstance(prediction, Tensor) or not isinstance(target, Tensor):
        raise TypeError("prediction and target must be torch.Tensors")
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
    if prediction.numel() == 0:
        raise ValueError("cannot average a loss over zero predictions")
    return 0.5 * (prediction - target).pow(2).mean()
