"""Evidence for class-filter statistics: the class selectivity index against shuffled labels, with bootstrap
intervals over samples.

``features [N, D]`` and ``targets [N]``: the null shuffles the labels over the samples, which keeps every
feature's distribution and the class sizes and breaks only the link between features and classes.
"""

from __future__ import annotations

import numpy as np

from probekit.api import permutation_evidence
from probekit_plugins.class_filters import stats


def class_means(features: np.ndarray, targets: np.ndarray, n_classes: int) -> np.ndarray:
    """``[C, D]`` mean feature per class (0 for a class with no sample), in float64 (so that the sums do not
    depend on how many threads the matrix product uses)."""
    onehot = np.eye(n_classes)[targets]
    return (onehot.T @ features.astype(np.float64)) / np.maximum(onehot.sum(0), 1)[:, None]


def selectivity_evidence(features: np.ndarray, targets: np.ndarray, n_classes: int, permutations: int,
                         resamples: int, level: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Every feature's selectivity and, last, their mean (``[D + 1]``,
    :func:`probekit.api.permutation_evidence`'s dict): small p when more class-selective than with shuffled
    labels."""
    def with_mean(selectivity: np.ndarray) -> np.ndarray:
        return np.append(selectivity, selectivity.mean())

    return permutation_evidence(
        lambda rows: with_mean(stats.selectivity(class_means(features[rows], targets[rows], n_classes))),
        lambda r: with_mean(stats.selectivity(class_means(features, r.permutation(targets), n_classes))),
        len(features), permutations, resamples, level, rng, desc="class-filters null")
