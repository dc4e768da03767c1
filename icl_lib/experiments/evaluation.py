"""Scoring a block on regression prompts: with the context, and without it through ``W + ΔW``.

The two predictions at the query are :func:`icl_lib.predict` and :func:`icl_lib.predict_implicit`.

* :func:`predictions_over_queries`: both predictions for every task and every query of a set
  (the map over the query plane of Dherin et al., 2025, Fig. 2);
* :func:`context_length_curve`: the loss against the number of context examples, beside the
  least-squares and zero baselines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from .baselines import least_squares_predict
from ..core.checks import module_dtype_device
from .tasks import RegressionBatch, regression_loss, regression_tokens
from .training import predict, predict_implicit

__all__ = ["predictions_over_queries", "ContextCurve", "context_length_curve"]


def _check_tasks(block: nn.Module, tasks: object) -> RegressionBatch:
    if not isinstance(tasks, RegressionBatch):
        raise TypeError(f"tasks must be an icl_lib.RegressionBatch, got {type(tasks).__name__}")
    dtype, device = module_dtype_device(block)
    if tasks.tokens.dtype != dtype or tasks.tokens.device != device:
        raise TypeError(f"tasks are {tasks.tokens.dtype} on {tasks.tokens.device} but the block is {dtype} on {device}")
    return tasks


@torch.no_grad()
def predictions_over_queries(
    block: nn.Module, tasks: RegressionBatch, x_queries: Tensor, *, chunk: int = 20_000
) -> tuple[Tensor, Tensor]:
    """Both predictions for every task's context and every query of a shared set.

    Args:
        block: a block taking tokens of width ``d + 1``.
        tasks: ``B`` prompts; their contexts are kept, their own queries ignored.
        x_queries: ``(K, d)``, the query inputs (e.g. a grid over the query plane).
        chunk: at most this many prompts per forward pass (memory bound).

    Returns:
        ``(with_context, implicit)``, each ``(B, K)``: the block on ``[C_b, (x_k, 0)]``, and the
        query ``(x_k, 0)`` alone through the block with ``W + ΔW(C_b, x_k)``.
    """
    tasks = _check_tasks(block, tasks)
    if not isinstance(x_queries, Tensor) or x_queries.ndim != 2 or x_queries.shape[1] != tasks.dim:
        got = tuple(x_queries.shape) if isinstance(x_queries, Tensor) else type(x_queries).__name__
        raise ValueError(f"x_queries must have shape (K, d={tasks.dim}), got {got}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    if tasks.n_context == 0:
        raise ValueError("the tasks have no context examples: there is no update to compare")
    b, k = tasks.tokens.shape[0], x_queries.shape[0]
    flat_x = tasks.x_context[:, None].expand(b, k, *tasks.x_context.shape[1:]).reshape(b * k, tasks.n_context, -1)
    flat_y = tasks.y_context[:, None].expand(b, k, tasks.n_context).reshape(b * k, -1)
    flat_q = x_queries.to(tasks.tokens)[None].expand(b, k, -1).reshape(b * k, -1)
    with_context, implicit = [], []
    for start in range(0, b * k, chunk):
        part = slice(start, start + chunk)
        tokens = regression_tokens(flat_x[part], flat_y[part], flat_q[part])
        with_context.append(predict(block, tokens))
        implicit.append(predict_implicit(block, tokens))
    return torch.cat(with_context).view(b, k), torch.cat(implicit).view(b, k)


@dataclass(frozen=True)
class ContextCurve:
    """Losses against the number of context examples ``n`` (NumPy, float64).

    Attributes:
        lengths: ``(L,)`` the context lengths ``n``.
        model: ``(L,)`` the block's loss on ``[c_1..c_n, x_q]``.
        model_implicit: ``(L,)`` the loss of the query alone through ``W + ΔW(c_1..c_n)``
            (equal to ``model`` up to round-off; ``n = 0`` needs no update and repeats ``model``).
        least_squares: ``(L,)`` the loss of minimum-norm least squares on the same examples.
        zero: the loss of the zero predictor on the same queries (one number).
    """

    lengths: np.ndarray
    model: np.ndarray
    model_implicit: np.ndarray
    least_squares: np.ndarray
    zero: float


@torch.no_grad()
def context_length_curve(block: nn.Module, tasks: RegressionBatch, lengths: Sequence[int]) -> ContextCurve:
    """The loss of the block and of the baselines when only the first ``n`` examples are given.

    Args:
        block: a block taking tokens of width ``d + 1``.
        tasks: ``B`` prompts with ``N`` examples each.
        lengths: context lengths ``n``, each in ``[0, N]``.
    """
    tasks = _check_tasks(block, tasks)
    if isinstance(lengths, (str, bytes)) or not isinstance(lengths, Sequence) or len(lengths) == 0:
        raise TypeError("lengths must be a non-empty sequence of ints")
    model, implicit, lsq = [], [], []
    for n in lengths:
        short = tasks.truncated(n)  # validates n
        with_context = predict(block, short.tokens)
        model.append(regression_loss(with_context, tasks.targets).item())
        without = with_context if n == 0 else predict_implicit(block, short.tokens)
        implicit.append(regression_loss(without, tasks.targets).item())
        ls = least_squares_predict(short.x_context, short.y_context, short.x_query)
        lsq.append(regression_loss(ls, tasks.targets).item())
    zero = regression_loss(torch.zeros_like(tasks.targets), tasks.targets).item()
    return ContextCurve(
        lengths=np.asarray(lengths),
        model=np.asarray(model),
        model_implicit=np.asarray(implicit),
        least_squares=np.asarray(lsq),
        zero=zero,
    )
