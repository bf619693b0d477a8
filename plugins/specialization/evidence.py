"""The specialization statistics and their null: branch identity permuted within each sample.

``values [N, B]`` holds a per-sample score for every branch (the branch's confidence in the true class alone, or
its response norm) and ``targets [N]`` the classes. The null (:func:`probekit.api.permute_within`) exchanges the
scores of the branches of one layer independently in every sample: it keeps what the whole layer does on each
sample (and so the model's per-class accuracy) and breaks only which branch does it. Identical branches are
unchanged by it, so they get p = 1.
"""

from __future__ import annotations

import numpy as np

from probekit.api import permutation_evidence, permute_within


def class_profiles(values: np.ndarray, targets: np.ndarray, n_classes: int) -> np.ndarray:
    """``[B, C]`` mean score of each branch over each class's samples (0 for a class with no sample)."""
    onehot = np.eye(n_classes)[targets]  # [N, C]
    return (values.T @ onehot) / np.maximum(onehot.sum(0), 1)


def specialization_index(profiles: np.ndarray) -> np.ndarray:
    """``[B]`` 1 - H(p) / log C of each branch's profile clipped at 0 and normalised to sum to 1."""
    p = np.clip(profiles, 0, None)
    p = p / np.maximum(p.sum(-1, keepdims=True), 1e-12)
    return 1 - -(p * np.log(np.maximum(p, 1e-12))).sum(-1) / np.log(profiles.shape[-1])


def heterogeneity(profiles: np.ndarray, parts: list[slice]) -> np.ndarray:
    """``[L]`` per layer: the mean squared difference between a branch's class profile and the layer's mean
    profile (0 when every branch of the layer has the same profile)."""
    return np.array([((profiles[part] - profiles[part].mean(0)) ** 2).mean() for part in parts])


def statistics(values: np.ndarray, targets: np.ndarray, n_classes: int, parts: list[slice]) -> np.ndarray:
    """``[B + L]``: every branch's specialization index, then every layer's heterogeneity."""
    profiles = class_profiles(values, targets, n_classes)
    return np.concatenate([specialization_index(profiles), heterogeneity(profiles, parts)])


def evidence(values: np.ndarray, targets: np.ndarray, n_classes: int, parts: list[slice], permutations: int,
             resamples: int, level: float, rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    """``{"index": ..., "heterogeneity": ...}``, each :func:`probekit.api.permutation_evidence`'s dict: every
    branch's index ``[B]`` and every layer's heterogeneity ``[L]`` under branch exchange within each layer, with
    bootstrap intervals over samples."""
    found = permutation_evidence(
        lambda rows: statistics(values[rows], targets[rows], n_classes, parts),
        lambda r: statistics(permute_within(values, r, parts), targets, n_classes, parts),
        len(values), permutations, resamples, level, rng, desc="specialization null")
    b = values.shape[1]
    return {"index": {key: value[:b] for key, value in found.items()},
            "heterogeneity": {key: value[b:] for key, value in found.items()}}
