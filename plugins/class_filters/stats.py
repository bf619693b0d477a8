"""The statistics of class-specific filters (Badola et al.), on non-negative features ``h [N, D]``.

Pure functions of numpy arrays, so each is easy to check against a plain transcription of its definition.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-7  # the class selectivity index's denominator guard


def top_k(h: np.ndarray, k: int) -> np.ndarray:
    """``[N, k]`` indices of each row's k largest features (ties: the lower index first)."""
    return np.argsort(-h, axis=1, kind="stable")[:, :k]


def mass_count(h: np.ndarray, fraction: float, rule: str = "below") -> np.ndarray:
    """``n_k(x)`` of each row of ``h [N, D]``, ``[N]`` ints in ``0..D`` (0 for an all-zero row), by ``rule``:

    * ``below`` (the reference's): how many of the largest features have a cumulative share of the L1 norm
      still below ``fraction``;
    * ``reaching``: how many of the largest features it takes to reach ``fraction`` (one more, for a non-zero row).
    """
    ordered = -np.sort(-h, axis=1)
    cumulative = np.cumsum(ordered, axis=1)
    total = cumulative[:, -1:]
    reached = cumulative >= fraction * total * (1 - 1e-12)  # (1 - 1e-12): fraction 1 is reached despite rounding
    reaching = np.where(total[:, 0] > 0, reached.argmax(axis=1) + 1, 0)
    return np.maximum(reaching - 1, 0) if rule == "below" else reaching


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


def frequencies(counts: np.ndarray) -> np.ndarray:
    """``[C, D]`` each class's top-k frequency distribution ``counts[c] / sum`` (zeros for a class never seen)."""
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros(counts.shape, dtype=np.float64), where=totals > 0)


def js_divergence(counts: np.ndarray) -> np.ndarray:
    """``[C, C]`` Jensen-Shannon divergence (bits) between the classes' top-k frequency distributions: the mutual
    information between the class of a pair (equally likely) and a filter index drawn from it; 0 for the same
    filters, 1 for disjoint ones."""
    p = frequencies(counts)
    out = np.zeros((len(p), len(p)))
    for a in range(len(p)):
        for b in range(len(p)):
            out[a, b] = _entropy((p[a] + p[b]) / 2, 2) - (_entropy(p[a], 2) + _entropy(p[b], 2)) / 2
    return out


REFERENCE_EPS = 1e-6  # the reference's guard: added to every entry of a distribution that has a zero


def reference_information(counts: np.ndarray) -> np.ndarray:
    """``[C, C]`` the reference's "mutual information" score (nats) between the classes' top-k frequency
    distributions: ``H(p_a) + H(p_b) - H(p_a + p_b)``, each entropy of its argument normalised to sum 1, with
    ``1e-6`` added to every entry of an argument that has a zero. Not a mutual information (the same filters give
    ``H(p_a)``, not 0); kept to compare with the reference's numbers."""
    p = frequencies(counts)
    entropy = [_smoothed_entropy(row) for row in p]
    return np.array([[entropy[a] + entropy[b] - _smoothed_entropy(p[a] + p[b]) for b in range(len(p))]
                     for a in range(len(p))])


def _smoothed_entropy(p: np.ndarray) -> float:
    """Entropy (nats) of ``p`` normalised, after adding :data:`REFERENCE_EPS` everywhere when any entry is 0."""
    p = p + REFERENCE_EPS if (p == 0).any() else p
    return _entropy(p / p.sum(), np.e)


def _entropy(p: np.ndarray, base: float) -> float:
    nonzero = p[p > 0]
    return float(-(nonzero * np.log(nonzero)).sum() / np.log(base))


def decomposed_logits(h: np.ndarray, weight: np.ndarray, bias: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """``logit_c = sum_{j in I_c} W_cj h_j + b_c`` for every row of ``h [N, D]``; ``filters [C, k]``; ``[N, C]``."""
    mask = np.zeros_like(weight, dtype=bool)
    np.put_along_axis(mask, filters, True, axis=1)
    return h @ np.where(mask, weight, 0).T + bias
