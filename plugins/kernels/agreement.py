"""Agreement of many labelings with fixed clusters, vectorised over the labelings (a permutation null needs
hundreds): ARI and NMI from contingency tables, and the silhouette of the labels from a distance matrix.

Each function takes ``labels [P, n]`` integer codes ``0..K-1``; the same formulas as scikit-learn's
``adjusted_rand_score``, ``normalized_mutual_info_score`` (arithmetic mean) and ``silhouette_score``
(precomputed distances; a point alone in its label scores 0), which ``tests/test_kernels.py`` checks.
"""

from __future__ import annotations

import numpy as np


def _contingency(labels: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """``[P, K, J]`` counts of (label, cluster) pairs per labeling; any cluster ids (e.g. -1 for noise)."""
    codes = np.unique(clusters, return_inverse=True)[1]
    k, j = int(labels.max()) + 1, int(codes.max()) + 1
    flat = (np.arange(len(labels))[:, None] * k + labels) * j + codes[None, :]
    return np.bincount(flat.ravel(), minlength=len(labels) * k * j).reshape(len(labels), k, j).astype(np.float64)


def _pairs(x: np.ndarray) -> np.ndarray:
    return x * (x - 1) / 2


def ari(labels: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """``[P]`` adjusted Rand index of each labeling against ``clusters [n]``."""
    table = _contingency(labels, clusters)
    index = _pairs(table).sum((1, 2))
    rows, cols = _pairs(table.sum(2)).sum(1), _pairs(table.sum(1)).sum(1)
    expected = rows * cols / _pairs(float(labels.shape[1]))
    top = (rows + cols) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (index - expected) / (top - expected)
    return np.where(top == expected, 1.0, out)  # sklearn: identical trivial partitions score 1


def _entropy(counts: np.ndarray) -> np.ndarray:
    p = counts / counts.sum(-1, keepdims=True)
    return -(p * np.log(np.where(p > 0, p, 1))).sum(-1)


def nmi(labels: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """``[P]`` normalised mutual information (arithmetic mean of the two entropies)."""
    table = _contingency(labels, clusters)
    n = labels.shape[1]
    rows, cols = table.sum(2, keepdims=True), table.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        terms = np.where(table > 0, table / n * np.log(table * n / (rows * cols)), 0)
    mi = terms.sum((1, 2))
    norm = (_entropy(table.sum(2)) + _entropy(table.sum(1))) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        out = mi / norm
    return np.where(norm > 0, np.maximum(out, 0), 1.0)


def silhouette(distances: np.ndarray, labels: np.ndarray, chunk: int = 64) -> np.ndarray:
    """``[P]`` mean silhouette of each labeling ``[P, m]`` of the ``m`` points of ``distances [m, m]``; NaN
    unless it has between 2 and m - 1 distinct labels. ``chunk`` labelings share one matrix product."""
    if not labels.size:
        return np.full(len(labels), np.nan)
    k, m = int(labels.max()) + 1, labels.shape[1]
    out = np.empty(len(labels))
    for start in range(0, len(labels), chunk):
        rows = labels[start:start + chunk]  # [c, m]
        onehot = np.eye(k)[rows]  # [c, m, K]
        sizes = onehot.sum(1)  # [c, K]
        totals = (distances @ onehot.transpose(1, 0, 2).reshape(m, -1)).reshape(m, len(rows), k).transpose(1, 0, 2)
        own = np.take_along_axis(sizes, rows, 1)  # [c, m]
        a = np.take_along_axis(totals, rows[..., None], 2)[..., 0] / np.maximum(own - 1, 1)
        means = np.where(sizes[:, None, :] > 0, totals / np.maximum(sizes[:, None, :], 1), np.inf)
        np.put_along_axis(means, rows[..., None], np.inf, 2)
        b = means.min(2)
        with np.errstate(invalid="ignore", divide="ignore"):
            s = np.where(own > 1, (b - a) / np.maximum(a, b), 0.0)
        used = (sizes > 0).sum(1)
        out[start:start + len(rows)] = np.where((used >= 2) & (used <= m - 1), np.nan_to_num(s).mean(1), np.nan)
    return out
