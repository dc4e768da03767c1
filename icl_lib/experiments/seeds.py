"""The same measurement on blocks trained from several seeds: how much a claim depends on one run.

A chapter that trains one block and measures something on it (a loss, a fitted exponent) reports
a number for that seed. :func:`over_seeds` trains the block again under each of several seeds,
with the same hyper-parameters otherwise, applies the chapter's measurement to every trained
block, and returns, for each named statistic, a :class:`SeedSpread`: the values per seed, their
mean and their range (smallest and largest value over the seeds).

The range is the interval the book reports: with five seeds a t-interval would rest on a normality
assumption that five values cannot check, while the range states exactly what was seen.

Training is the costly part (a few seconds per block on one CPU thread), so a block the chapter has
already trained can be passed in and is not trained again::

    spread = icl.over_seeds(config, range(5), measure, trained={0: (block, history)})
    spread["loss"].text(".2f")      # '0.13 (0.12 to 0.15)'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from torch import nn

from .training import TrainingConfig, TrainingHistory, train_block

__all__ = ["SeedSpread", "over_seeds"]


@dataclass(frozen=True)
class SeedSpread:
    """One statistic measured on blocks trained from several seeds.

    Attributes:
        seeds: the seeds, in the order they were run, shape ``(S,)``.
        values: the statistic for each seed, a float array of shape ``(S,)``.
    """

    seeds: tuple[int, ...]
    values: np.ndarray

    def __post_init__(self) -> None:
        values = np.asarray(self.values, dtype=float)
        if values.ndim != 1 or values.size != len(self.seeds) or values.size == 0:
            raise ValueError(f"values must have one entry per seed ({len(self.seeds)}), got shape {values.shape}")
        if not np.all(np.isfinite(values)):
            raise ValueError(f"a statistic is not finite for some seed: {values.tolist()}")
        object.__setattr__(self, "values", values)

    @property
    def mean(self) -> float:
        """The mean over the seeds."""
        return float(self.values.mean())

    @property
    def low(self) -> float:
        """The smallest value over the seeds."""
        return float(self.values.min())

    @property
    def high(self) -> float:
        """The largest value over the seeds."""
        return float(self.values.max())

    def text(self, fmt: str = ".2f") -> str:
        """``'mean (low to high)'``, each number written with the format ``fmt``."""
        return f"{self.mean:{fmt}} ({self.low:{fmt}} to {self.high:{fmt}})"


def over_seeds(
    config: TrainingConfig,
    seeds: Iterable[int],
    measure: Callable[[nn.Module, TrainingHistory], Mapping[str, float]],
    *,
    trained: Mapping[int, tuple[nn.Module, TrainingHistory]] | None = None,
) -> dict[str, SeedSpread]:
    """Train a block under ``config`` for each seed and measure it; the statistics over the seeds.

    Args:
        config: the hyper-parameters; its ``seed`` field is replaced by each seed in turn.
        seeds: distinct seeds (at least one).
        measure: maps a trained block (eval mode) and its history to named statistics; it must
            return the same names for every seed.
        trained: already trained ``(block, history)`` pairs by seed, used instead of training
            again. The caller vouches that each was trained under ``config`` with that seed
            (the validation settings ``eval_every`` and ``n_val`` may differ: they do not change
            the trained weights).

    Returns:
        For each statistic's name, a :class:`SeedSpread` over ``seeds``, in their order.

    Raises:
        TypeError: if ``config`` is not a :class:`TrainingConfig` or ``measure`` is not callable.
        ValueError: if ``seeds`` is empty or repeats a seed, or ``measure`` returns no statistic
            or different names for different seeds.
    """
    if not isinstance(config, TrainingConfig):
        raise TypeError(f"config must be a TrainingConfig, got {type(config).__name__}")
    if not callable(measure):
        raise TypeError("measure must be a function of (block, history)")
    seeds = tuple(int(seed) for seed in seeds)
    if not seeds:
        raise ValueError("over_seeds needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"the seeds repeat: {seeds}")
    trained = dict(trained or {})
    names: tuple[str, ...] | None = None
    columns: dict[str, list[float]] = {}
    for seed in seeds:
        if seed in trained:
            block, history = trained[seed]
        else:
            block, history = train_block(dataclasses.replace(config, seed=seed))
        statistics = dict(measure(block, history))
        if not statistics:
            raise ValueError("measure returned no statistic")
        if names is None:
            names = tuple(statistics)
            columns = {name: [] for name in names}
        elif set(statistics) != set(names):
            raise ValueError(f"measure returned {sorted(statistics)} for seed {seed}, {sorted(names)} before")
        for name in names:
            columns[name].append(float(statistics[name]))
    return {name: SeedSpread(seeds, np.array(values)) for name, values in columns.items()}
