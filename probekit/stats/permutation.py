"""Permutation nulls: p-values from a null sample, and the permutations probekit's analyses use."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm  # (renders as a widget in a notebook)

TIE_TOLERANCE = 1e-9  # a null value within this (relative) of the observed one counts as a tie, i.e. as extreme


def permutation_p(observed: np.ndarray, null: np.ndarray, alternative: str = "greater") -> np.ndarray:
    """One-sided (or two-sided) permutation p-values ``(1 + #{null at least as extreme}) / (1 + P)``.

    ``observed``: ``[...]``; ``null``: ``[P, ...]``, the statistic under P permutations. A null value equal to the
    observed one up to rounding (:data:`TIE_TOLERANCE`, relative) counts as extreme, so a statistic the
    permutation cannot change gets p = 1. ``alternative``: ``greater`` (large values are evidence), ``less``, or
    ``two-sided`` (distance from the null's mean). NaN where ``observed`` is NaN; the floor is ``1 / (1 + P)``.
    """
    observed, null = np.asarray(observed, dtype=np.float64), np.asarray(null, dtype=np.float64)
    if alternative == "two-sided":
        centre = null.mean(axis=0)
        observed, null = np.abs(observed - centre), np.abs(null - centre)
    elif alternative == "less":
        observed, null = -observed, -null
    elif alternative != "greater":
        raise ValueError(f"alternative must be greater, less or two-sided, not {alternative!r}")
    slack = TIE_TOLERANCE * np.maximum(np.abs(observed), 1.0)
    extreme = (null >= observed - slack).sum(axis=0)
    return np.where(np.isnan(observed), np.nan, (1 + extreme) / (1 + len(null)))


def permute_within(values: np.ndarray, rng: np.random.Generator, parts: Sequence[slice] | None = None) -> np.ndarray:
    """``values [N, K, ...]`` with the K entries of each row shuffled independently per row (and, with ``parts``,
    only within each slice of K: the branches of one layer are exchanged only with each other)."""
    out = values.copy()
    for part in parts or [slice(0, values.shape[1])]:
        block = values[:, part]
        if block.ndim == 2:
            out[:, part] = rng.permuted(block, axis=1)
            continue
        order = rng.random(block.shape[:2]).argsort(axis=1)
        out[:, part] = np.take_along_axis(block, order.reshape(order.shape + (1,) * (block.ndim - 2)), axis=1)
    return out


def permutation_null(statistic: Callable[[np.random.Generator], np.ndarray], permutations: int,
                     rng: np.random.Generator, desc: str = "permutations") -> np.ndarray:
    """``[P, ...]``: ``statistic(rng)`` evaluated ``permutations`` times, each drawing its own permutation from
    ``rng`` (a progress bar on a terminal)."""
    return np.stack([np.asarray(statistic(rng), dtype=np.float64)
                     for _ in tqdm(range(permutations), desc=desc, leave=False, disable=None)])


def summarise_null(observed: np.ndarray, null: np.ndarray | None, alternative: str = "greater",
                   band: float = 0.95) -> dict[str, np.ndarray]:
    """``{"p", "null": the null's mean, "band": [..., 2] its central ``band`` quantiles}`` of ``observed [...]``
    against ``null [P, ...]``; all NaN when ``null`` is ``None`` (no permutations)."""
    observed = np.asarray(observed, dtype=np.float64)
    if null is None or not len(null):
        nan = np.full(observed.shape, np.nan)
        return {"p": nan, "null": nan, "band": np.full((*observed.shape, 2), np.nan)}
    tail = (1 - band) / 2
    return {"p": permutation_p(observed, null, alternative), "null": null.mean(axis=0),
            "band": np.moveaxis(np.quantile(null, [tail, 1 - tail], axis=0), 0, -1)}
