"""Do different branches lead on different samples of a class? The overlap of their top lists, against branch
exchange within each sample.

``values [N, B]``: each branch's score on each sample (confidence alone, or response norm); ``targets [N]``. Per
layer and class, every branch's top ``share`` of the class's samples is a set; ``overlap`` is the mean Jaccard
index over the pairs of the layer's branches (1: the same samples, 0: disjoint). The null exchanges the branches
of a layer independently in every sample, which keeps how confident the layer as a whole is on each sample and
breaks only which branch is: overlap *below* it means the branches lead on different samples of the class.
"""

from __future__ import annotations

import math

import numpy as np

from probekit.api import permutation_evidence, permute_within


def overlap(values: np.ndarray, targets: np.ndarray, n_classes: int, parts: list[slice], share: float
            ) -> np.ndarray:
    """``[L, C]`` mean pairwise Jaccard index of the branches' top-``share`` sample sets (NaN for a class with
    no sample or a layer of one branch)."""
    out = np.full((len(parts), n_classes), np.nan)
    for c in range(n_classes):
        rows = values[targets == c]
        if not len(rows):
            continue
        k = max(1, math.ceil(share * len(rows)))
        top = np.zeros(rows.shape, dtype=np.float64)
        np.put_along_axis(top, np.argsort(-rows, axis=0, kind="stable")[:k], 1.0, axis=0)
        for i, part in enumerate(parts):
            b = part.stop - part.start
            if b < 2:
                continue
            common = top[:, part].T @ top[:, part]
            jaccard = common / (2 * k - common)
            out[i, c] = jaccard[~np.eye(b, dtype=bool)].mean()
    return out


def evidence(values: np.ndarray, targets: np.ndarray, n_classes: int, parts: list[slice], share: float,
             permutations: int, resamples: int, level: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The overlap ``[L, C]`` (:func:`probekit.api.permutation_evidence`'s dict; small p: less overlap than branch
    exchange gives)."""
    return permutation_evidence(
        lambda rows: overlap(values[rows], targets[rows], n_classes, parts, share),
        lambda r: overlap(permute_within(values, r, parts), targets, n_classes, parts, share),
        len(values), permutations, resamples, level, rng, "less", desc="intra-class null")
