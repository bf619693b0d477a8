"""The statistics of class-specific filters (Badola et al.), on non-negative features ``h [N, D]``.

Pure functions of numpy arrays, so each is easy to check against a plain transcription of its definition.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-7  # the class selectivity index's denominator guard


def top_k(h: np.ndarray, k: int) -> np.ndarray:
    """``[N, k]`` indices of each row's k largest features (ties: the lower index first)."""
    return np.argsort(-h, axis=1, kind="stable")[:, :k]


def mass_count(h: np.ndarray, fraction: float) -> np.ndarray:
    """``n_k(x)``: how many of the largest features of each row hold ``fraction`` of its L1 norm; ``[N]`` ints
    in ``0..D`` (0 for an all-zero row)."""
    ordered = -np.sort(-h, axis=1)
    cumulative = np.cumsum(ordered, axis=1)
    total = cumulative[:, -1:]
    reached = cumulative >= fraction * total * (1 - 1e-12)  # (1 - 1e-12): fraction 1 is reached despite rounding
    return np.where(total[:, 0] > 0, reached.argmax(axis=1) + 1, 0)


def histogram_median(histogram: np.ndarray) -> np.ndarray:
    """The median of the values ``0..V-1`` counted in ``histogram [..., V]`` (numpy's: the mean of the two middle
    values for an even count); NaN where nothing was counted."""
    counts = histogram.sum(-1)
    cumulative = np.cumsum(histogram, axis=-1)
    low = _rank_value(cumulative, (counts - 1) // 2)
    high = _rank_value(cumulative, counts // 2)
    return np.where(counts > 0, (low + high) / 2, np.nan)


def _rank_value(cumulative: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """The value at 0-based ``rank`` in sorted order, from cumulative counts ``[..., V]``."""
    flat = cumulative.reshape(-1, cumulative.shape[-1])
    ranks = np.broadcast_to(rank, cumulative.shape[:-1]).reshape(-1)
    values = np.array([np.searchsorted(row, r, side="right") for row, r in zip(flat, ranks, strict=True)])
    return values.reshape(cumulative.shape[:-1])


def psi(median_count: np.ndarray, features: int) -> np.ndarray:
    """``Psi_c(k) = (D - median_x n_k(x)) / D``."""
    return (features - median_count) / features


def selectivity(class_means: np.ndarray) -> np.ndarray:
    """Class selectivity index per feature from ``[C, D]`` class means: ``(mu_max - mu_rest) / (mu_max + mu_rest
    + 1e-7)``, ``mu_rest`` the mean of the other classes' means."""
    top = class_means.max(axis=0)
    rest = (class_means.sum(axis=0) - top) / max(len(class_means) - 1, 1)
    return (top - rest) / (top + rest + EPS)


def class_filters(counts: np.ndarray, k: int) -> np.ndarray:
    """``I_c``: ``[C, k]`` indices of the k most counted features of each class (ties: the lower index)."""
    return np.argsort(-counts, axis=1, kind="stable")[:, :k]


def pairwise_information(counts: np.ndarray) -> np.ndarray:
    """``[C, C]`` mutual information (bits) between the class and the filter index, for each pair of classes a, b
    taken equally likely, the index drawn from the class's top-k frequency distribution ``counts[c] / sum``.
    This is the Jensen-Shannon divergence of the two distributions: 0 for the same filters, 1 for disjoint ones."""
    totals = counts.sum(axis=1, keepdims=True)
    p = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=np.float64), where=totals > 0)
    out = np.zeros((len(p), len(p)))
    for a in range(len(p)):
        for b in range(len(p)):
            mixture = (p[a] + p[b]) / 2
            out[a, b] = (_entropy(mixture) - (_entropy(p[a]) + _entropy(p[b])) / 2)
    return out


def _entropy(p: np.ndarray) -> float:
    nonzero = p[p > 0]
    return float(-(nonzero * np.log2(nonzero)).sum())


def decomposed_logits(h: np.ndarray, weight: np.ndarray, bias: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """``logit_c = sum_{j in I_c} W_cj h_j + b_c`` for every row of ``h [N, D]``; ``filters [C, k]``; ``[N, C]``."""
    mask = np.zeros_like(weight, dtype=bool)
    np.put_along_axis(mask, filters, True, axis=1)
    return h @ np.where(mask, weight, 0).T + bias
