"""Percentile bootstrap intervals, resampling samples or, when the data name groups, whole groups."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np


def group_members(groups: np.ndarray) -> list[np.ndarray]:
    """The sample positions of each group of ``groups [n]`` (a label per sample)."""
    inverse = np.unique(np.asarray(groups), return_inverse=True)[1]
    return [np.flatnonzero(inverse == g) for g in range(int(inverse.max()) + 1)] if len(inverse) else []


def resample_indices(n: int, rng: np.random.Generator, groups: np.ndarray | list | None = None) -> np.ndarray:
    """Sample positions of one bootstrap resample of ``n`` samples: ``n`` drawn with replacement, or, with
    ``groups`` (a label per sample, e.g. the cat a view was cut from; or :func:`group_members`' list), as many
    groups drawn with replacement as there are, each bringing all its samples (a clustered bootstrap)."""
    if groups is None:
        return rng.integers(0, n, n)
    members = groups if isinstance(groups, list) else group_members(groups)
    return np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])


def bootstrap_ci(statistic: Callable[[np.ndarray], np.ndarray], n: int, resamples: int, rng: np.random.Generator,
                 level: float = 0.95, groups: np.ndarray | None = None) -> np.ndarray:
    """``[..., 2]`` (low, high) percentile interval of ``statistic(indices) -> [...]`` over ``resamples``
    bootstrap resamples of ``n`` samples (clustered by ``groups`` when given). NaN bounds where a resample's
    statistic is NaN too often to place them, and all-NaN when ``resamples`` is 0."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), not {level}")
    if resamples <= 0:
        shape = np.shape(statistic(np.arange(n)))
        return np.full((*shape, 2), np.nan)
    members = None if groups is None else group_members(groups)  # found once, not per resample
    draws = np.stack([np.asarray(statistic(resample_indices(n, rng, members)), dtype=np.float64)
                      for _ in range(resamples)])
    tail = (1 - level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN entry (a score undefined on resamples)
        bounds = np.nanquantile(draws, [tail, 1 - tail], axis=0)
    return np.moveaxis(bounds, 0, -1)
