"""Context baselines for in-context linear regression: least squares and the zero predictor.

In the noiseless task ``y = ⟨w, x⟩`` with ``w, x ~ N(0, I_d)``:

* the zero predictor ``ŷ = 0`` has expected loss ``½ E[y²] = ½ E‖w‖² = d / 2``;
* least squares on the context, with the minimum-norm solution ``ŵ = X⁺ y`` when ``N < d``,
  recovers ``w`` exactly once ``N ≥ d`` (the ``x_j`` are almost surely in general position); for
  ``N < d``, ``ŵ`` is the orthogonal projection of ``w`` onto the span of the ``x_j``, so the
  expected loss is ``½ (d − N)`` (the ``d − N`` missing directions each carry variance 1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .tasks import _check_count, regression_tokens

__all__ = ["least_squares_predict", "zero_predictor_loss", "least_squares_expected_loss"]


def least_squares_predict(x_context: Tensor, y_context: Tensor, x_query: Tensor) -> Tensor:
    """Minimum-norm least-squares prediction at the query from the context examples alone.

    Args:
        x_context: ``(B, N, d)``; ``N = 0`` gives the zero prediction.
        y_context: ``(B, N)``.
        x_query: ``(B, d)``.

    Returns:
        ``(B,)``: ``⟨X⁺ y, x_q⟩`` per task.
    """
    regression_tokens(x_context, y_context, x_query)  # validates shapes, dtypes, devices, finiteness
    if x_context.shape[1] == 0:
        return x_query.new_zeros(x_query.shape[0])
    w_hat = torch.linalg.pinv(x_context) @ y_context[..., None]  # (B, d, 1)
    return (w_hat[..., 0] * x_query).sum(-1)


def zero_predictor_loss(dim: int) -> float:
    """``½ E[y²] = d / 2``: the expected loss of always predicting 0."""
    return _check_count(dim, "dim", 1) / 2


def least_squares_expected_loss(dim: int, n_context: int) -> float:
    """Expected loss of minimum-norm least squares with ``N`` noiseless examples: ``½ max(d − N, 0)``."""
    dim = _check_count(dim, "dim", 1)
    n_context = _check_count(n_context, "n_context", 0)
    return max(dim - n_context, 0) / 2
