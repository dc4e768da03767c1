"""How a contextual layer remembers its context, read off the implicit updates.

Two measurements used to compare contextual layers (softmax attention, linear attention, a
recurrent layer) through the updates ``ΔW`` they induce:

* :func:`icl_lib.power_law_fit`: the exponent ``p`` of a decay ``y ≈ c · i^p``, by least squares on
  ``log y`` against ``log i`` (for the convergence curve ``‖ΔW_{i+1} − ΔW_i‖`` of
  :meth:`icl_lib.ImplicitTrajectory.increment_norms`);
* :func:`icl_lib.bootstrap_exponents`: the spread of that exponent when the tasks are resampled;
* :func:`icl_lib.token_influence`: how much the final update ``ΔW(C)`` moves when a single context
  token ``c_j`` is replaced by another, for every position ``j``. A layer that averages over its
  context (and has no positional information) weighs all positions alike; a recurrent state
  that forgets weighs recent tokens more.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..core.checks import check_tokens, module_dtype_device
from ..core.implicit import implicit_update
from ..core.architecture import view_of

__all__ = ["PowerLawFit", "power_law_fit", "bootstrap_exponents", "token_influence"]


@dataclass(frozen=True)
class PowerLawFit:
    """``y ≈ prefactor · i^exponent``, fitted on ``log y = log prefactor + exponent · log i``.

    Attributes:
        exponent: the slope ``p`` in log–log coordinates.
        prefactor: ``c``.
        steps: the ``i`` used in the fit (NumPy, float64).
    """

    exponent: float
    prefactor: float
    steps: np.ndarray

    def __call__(self, steps: np.ndarray) -> np.ndarray:
        """The fitted curve ``c · i^p`` at ``steps``."""
        return self.prefactor * np.asarray(steps, dtype=np.float64) ** self.exponent


def power_law_fit(steps: Tensor | np.ndarray, values: Tensor | np.ndarray) -> PowerLawFit:
    """Least-squares fit of ``log values`` on ``log steps`` (ordinary, unweighted).

    Args:
        steps: ``(n,)`` positive numbers ``i`` (at least two distinct).
        values: ``(n,)`` positive numbers ``y_i``.

    Returns:
        a :class:`icl_lib.PowerLawFit`.
    """
    steps = np.asarray(steps.detach().cpu() if isinstance(steps, Tensor) else steps, dtype=np.float64)
    values = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values, dtype=np.float64)
    if steps.ndim != 1 or steps.shape != values.shape:
        raise ValueError(f"steps and values must be 1-d of the same length, got {steps.shape} and {values.shape}")
    if not (np.isfinite(steps).all() and np.isfinite(values).all()):
        raise ValueError("steps and values must be finite")
    if (steps <= 0).any() or (values <= 0).any():
        raise ValueError("steps and values must be positive for a fit in log-log coordinates")
    if np.unique(steps).size < 2:
        raise ValueError("need at least two distinct steps to fit a power law")
    exponent, intercept = np.polyfit(np.log(steps), np.log(values), 1)
    return PowerLawFit(exponent=float(exponent), prefactor=float(np.exp(intercept)), steps=steps)


def bootstrap_exponents(
    steps: Tensor | np.ndarray, samples: Tensor | np.ndarray, *, n_resamples: int, seed: int
) -> np.ndarray:
    """Power-law exponents of the mean curve over tasks resampled with replacement.

    Args:
        steps: ``(n,)`` positive ``i``.
        samples: ``(B, n)`` positive values, one row per task; the fitted curve is the row mean.
        n_resamples: number of bootstrap resamples (``≥ 1``).
        seed: seeds a NumPy generator (the global random state is not touched).

    Returns:
        ``(n_resamples,)``: the exponent of :func:`icl_lib.power_law_fit` on each resampled mean curve;
        their standard deviation estimates the standard error of the exponent.
    """
    samples = np.asarray(samples.detach().cpu() if isinstance(samples, Tensor) else samples, dtype=np.float64)
    if samples.ndim != 2 or samples.shape[0] < 2:
        raise ValueError(f"samples must be (B, n) with B ≥ 2 tasks, got shape {samples.shape}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive int, got {n_resamples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    rng = np.random.default_rng(seed)
    b = samples.shape[0]
    rows = rng.integers(0, b, size=(n_resamples, b))
    return np.array([power_law_fit(steps, samples[r].mean(axis=0)).exponent for r in rows])


@torch.no_grad()
def token_influence(block: nn.Module, tokens: Tensor, replacements: Tensor) -> Tensor:
    """``‖ΔW(C with c_j ← c′_j) − ΔW(C)‖_F`` for every context position ``j``.

    The query (and so the reference ``A(x)``) is unchanged, so both updates share the right factor
    ``v = A(x)`` and the difference is ``(u′_j − u) vᵀ / ‖v‖²``, of norm ``‖u′_j − u‖ / ‖v‖``.

    Args:
        block: an :class:`icl_lib.Block` or a ``torch.nn.TransformerEncoderLayer``.
        tokens: ``(B, N + 1, D)``: the context ``c_1..c_N`` then the query, ``N ≥ 1``.
        replacements: ``(B, N, D)``: ``c′_j``, the token put in place of ``c_j`` (one at a time).

    Returns:
        ``(B, N)``: entry ``j`` is the change of the whole-context update when only ``c_j`` changes.
    """
    view = view_of(block)
    dtype, device = module_dtype_device(block)
    width = view.first.in_features
    tokens = check_tokens(tokens, "tokens", width=width, dtype=dtype, device=device, min_length=2)
    b, t, d = tokens.shape
    replacements = check_tokens(replacements, "replacements", width=width, dtype=dtype, device=device, batch=b)
    if replacements.shape[1] != t - 1:
        raise ValueError(
            f"replacements must hold one token per context position, (B, N, D) = {(b, t - 1, d)}, "
            f"got {tuple(replacements.shape)}"
        )
    n = t - 1
    base = implicit_update(block, tokens)
    edited = tokens[:, None].repeat(1, n, 1, 1)  # (B, N, T, D): copy j has c_j replaced
    positions = torch.arange(n, device=device)
    edited[:, positions, positions] = replacements
    moved = implicit_update(block, edited.reshape(b * n, t, d))
    du = moved.u.view(b, n, -1) - base.u[:, None]
    return du.norm(dim=-1) / base.v.norm(dim=-1)[:, None]
