"""Evidence for class-filter statistics: the class selectivity index against shuffled labels, with bootstrap
intervals over samples.

``features [N, D]`` and ``targets [N]``: the null shuffles the labels over the samples, which keeps every
feature's distribution and the class sizes and breaks only the link between features and classes.
"""

from __future__ import annotations

import numpy as np

from probekit.api import bootstrap_ci, permutation_null, permutation_p
from probekit_plugins.class_filters import stats


def class_means(features: np.ndarray, targets: np.ndarray, n_classes: int) -> np.ndarray:
    """``[C, D]`` mean feature per class (0 for a class with no sample)."""
    onehot = np.eye(n_classes, dtype=features.dtype)[targets]
    return (onehot.T @ features) / np.maximum(onehot.sum(0), 1)[:, None]


def selectivity_evidence(features: np.ndarray, targets: np.ndarray, n_classes: int, permutations: int,
                         resamples: int, level: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``{"p", "null": [D], "ci": [D, 2]}`` for every feature's selectivity: p small when it is more
    class-selective than with shuffled labels."""
    observed = stats.selectivity(class_means(features, targets, n_classes))
    if permutations:
        null = permutation_null(lambda r: stats.selectivity(class_means(features, r.permutation(targets), n_classes)),
                                permutations, rng, "class-filters null")
        p, null_mean = permutation_p(observed, null), null.mean(0)
    else:
        p = null_mean = np.full(observed.shape, np.nan)
    ci = bootstrap_ci(lambda rows: stats.selectivity(class_means(features[rows], targets[rows], n_classes)),
                      len(features), resamples, rng, level)
    return {"p": p, "null": null_mean, "ci": ci}
