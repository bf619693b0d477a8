"""The similarity null: every branch's samples shuffled independently, on a fixed-size sketch of the responses
(the covariance node's sketch, :mod:`probekit_plugins.covariance.evidence`).

The statistic is a layer's mean linear CKA between distinct branches, computed on the sketch ``[N, K, r]``: the
null keeps every branch's own responses and breaks only which samples they are paired with, so a layer whose
branches share structure beyond chance has a mean CKA above it; the interval bootstraps the samples.
"""

from __future__ import annotations

import numpy as np

from probekit.api import permutation_evidence
from probekit_plugins.covariance.evidence import mean_of_finite, shuffled

from .cka import cross_cka, exact_cka, self_energy


def mean_cka(sketch: np.ndarray) -> float:
    """Mean linear CKA over the pairs k != l of one layer's ``sketch [N, K, r]`` (NaN with one branch)."""
    flat = sketch.astype(np.float64).reshape(len(sketch), -1)
    cka = exact_cka(flat.T @ flat, flat.sum(0), len(sketch), sketch.shape[1])
    return mean_of_finite(cka[~np.eye(sketch.shape[1], dtype=bool)])


def evidence(sketch: np.ndarray, permutations: int, resamples: int, level: float,
             rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One layer's sketched mean CKA (:func:`probekit.api.permutation_evidence`'s dict; greater than chance)."""
    return permutation_evidence(lambda rows: mean_cka(sketch[rows]), lambda g: mean_cka(shuffled(sketch, g)),
                                len(sketch), permutations, resamples, level, rng, "greater", desc="similarity null")


def matched_cka(own: np.ndarray, theirs: np.ndarray) -> float:
    """The mean CKA of the Hungarian matching between one layer's sketches ``own [N, K, r]`` and ``theirs``
    ``[N, J, r]`` of the reference (NaN when a side has no variance)."""
    from scipy.optimize import linear_sum_assignment

    a = own.astype(np.float64).reshape(len(own), -1)
    b = theirs.astype(np.float64).reshape(len(theirs), -1)
    sums, other_sums = a.sum(0), b.sum(0)
    block = cross_cka(a.T @ b, sums, other_sums, self_energy(a.T @ a, sums, len(a), own.shape[1]),
                      self_energy(b.T @ b, other_sums, len(b), theirs.shape[1]), len(a))
    if not np.isfinite(block).any():
        return float("nan")
    rows, cols = linear_sum_assignment(np.nan_to_num(block, nan=-1.0), maximize=True)
    return mean_of_finite(block[rows, cols])


def match_evidence(own: np.ndarray, theirs: np.ndarray, permutations: int, resamples: int, level: float,
                   rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One layer's matched CKA (sketched) against the reference's samples shuffled (greater than chance)."""
    return permutation_evidence(lambda rows: matched_cka(own[rows], theirs[rows]),
                                lambda g: matched_cka(own, theirs[g.permutation(len(theirs))]), len(own),
                                permutations, resamples, level, rng, "greater", desc="similarity match null")


MIN_COROUTED = 4  # co-routed samples a pair needs to count in the co-routed mean


def corouted_mean(sketch: np.ndarray, routed: np.ndarray, rows: np.ndarray,
                  rng: np.random.Generator | None = None) -> float:
    """The mean over expert pairs of their CKA on the samples of ``rows`` routed to both (``sketch [N, K, r]``
    gated contributions, ``routed [N, K]``); ``rng`` shuffles, for each pair, the second expert's co-routed rows
    (the null). Pairs with fewer than ``MIN_COROUTED`` such samples are left out."""
    values = []
    k = sketch.shape[1]
    for j in range(k):
        for i in range(j + 1, k):
            both = rows[routed[rows, j] & routed[rows, i]]
            if len(both) < MIN_COROUTED:
                continue
            other = both if rng is None else rng.permutation(both)
            values.append(mean_cka(np.stack([sketch[both, j], sketch[other, i]], axis=1)))
    return mean_of_finite(np.array(values)) if values else float("nan")


def corouted_evidence(sketch: np.ndarray, routed: np.ndarray, permutations: int, resamples: int, level: float,
                      rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One gated layer's mean co-routed CKA (sketched) against each pair's co-routed samples shuffled."""
    n = len(sketch)
    return permutation_evidence(lambda rows: corouted_mean(sketch, routed, rows),
                                lambda g: corouted_mean(sketch, routed, np.arange(n), g), n, permutations, resamples,
                                level, rng, "greater", desc="similarity co-routed null")
