"""The evidence layer: every null the bundled analyses use gives uniform p-values when the null is true (a
Kolmogorov-Smirnov test over 200 simulated runs) and detects a planted effect; intervals cover; corrections
match their definitions."""

import numpy as np
import pytest
import torch
from scipy.stats import kstest

from probekit.api import adjust_p, bootstrap_ci, permutation_p, permute_within
from probekit.stats.evidence import adjust_within, smallest_adjusted_p
from probekit.zoo.nad_evidence import mask_evidence
from probekit_plugins.activity import evidence as activity
from probekit_plugins.class_filters import evidence as class_filters
from probekit_plugins.covariance import evidence as covariance
from probekit_plugins.kernels.cluster_scores import cluster, label_agreement
from probekit_plugins.specialization import evidence as specialization

RUNS = 200  # simulated runs per calibration
P = 49  # permutations per run: p-values are multiples of 0.02


def uniform(p_values) -> float:
    """The KS p-value of ``p_values`` against U(0, 1)."""
    return kstest(np.asarray(p_values), "uniform").pvalue


def test_permutation_p_counts_ties_as_extreme_and_has_its_floor():
    null = np.array([[0.0], [1.0], [2.0], [3.0]])
    assert permutation_p(np.array([3.0]), null)[0] == pytest.approx(2 / 5)
    assert permutation_p(np.array([9.0]), null)[0] == pytest.approx(1 / 5)  # the floor 1 / (1 + P)
    assert permutation_p(np.array([-1.0]), null, "less")[0] == pytest.approx(1 / 5)
    assert permutation_p(np.array([1.0 + 1e-12]), np.full((4, 1), 1.0))[0] == 1.0  # rounding is a tie
    assert np.isnan(permutation_p(np.array([np.nan]), null)[0])


def test_holm_and_bh_match_their_definitions():
    p = np.array([0.01, 0.04, 0.03, 0.005, np.nan])
    np.testing.assert_allclose(adjust_p(p, "holm"), [0.03, 0.06, 0.06, 0.02, np.nan])
    np.testing.assert_allclose(adjust_p(np.array([0.01, 0.02, 0.03, 0.5]), "bh"), [0.04, 0.04, 0.04, 0.5])
    np.testing.assert_allclose(adjust_p(p, "none"), p)
    grid = np.array([[0.01, 0.02], [0.04, 0.001]])  # families along the second dim: one per row
    np.testing.assert_allclose(adjust_within(grid, ("a", "b"), ("b",), "holm"), [[0.02, 0.02], [0.04, 0.002]])
    assert smallest_adjusted_p(99, 10, "holm") == pytest.approx(0.1)


def test_bootstrap_covers_and_clusters_when_samples_come_in_groups():
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(RUNS):
        x = rng.normal(size=50)
        low, high = bootstrap_ci(lambda rows, x=x: x[rows].mean(), 50, 200, rng)
        covered += low <= 0 <= high
    assert 0.88 <= covered / RUNS <= 0.99
    groups = np.repeat(np.arange(10), 10)  # 10 cats, 10 views each: the views share their cat's effect
    hits = {"clustered": 0, "plain": 0}
    for _ in range(100):
        x = rng.normal(size=10)[groups] + 0.1 * rng.normal(size=100)
        for name, by in (("clustered", groups), ("plain", None)):
            low, high = bootstrap_ci(lambda rows, x=x: x[rows].mean(), 100, 200, rng, groups=by)
            hits[name] += low <= 0 <= high
    assert hits["clustered"] >= 80 and hits["plain"] <= 60  # treating views as samples is overconfident


def test_permute_within_exchanges_only_inside_each_part():
    values = np.arange(12.0).reshape(2, 6)
    out = permute_within(values, np.random.default_rng(0), [slice(0, 2), slice(2, 6)])
    for row, shuffled in zip(values, out, strict=True):
        assert sorted(shuffled[:2]) == sorted(row[:2]) and sorted(shuffled[2:]) == sorted(row[2:])


def _specialization(values, targets, permutations=P, seed=0):
    return specialization.evidence(values, targets, 3, [slice(0, 4)], permutations, 0, 0.95,
                                   np.random.default_rng(seed))


def test_specialization_null_is_uniform_detects_a_planted_branch_and_ignores_identical_branches():
    rng = np.random.default_rng(1)
    targets = np.repeat(np.arange(3), 30)
    accuracy = np.array([0.9, 0.6, 0.3])[targets][:, None]  # the model's per-class accuracy: not specialization
    p = [_specialization(accuracy + 0.2 * rng.random((90, 4)), targets, seed=i)["heterogeneity"]["p"][0]
         for i in range(RUNS)]
    assert uniform(p) > 0.01
    planted = accuracy + 0.2 * rng.random((90, 4))
    planted[targets == 0, 0] += 0.3  # branch 0 handles class 0
    found = _specialization(planted, targets)
    assert found["heterogeneity"]["p"][0] == pytest.approx(1 / (P + 1)) and found["index"]["p"][0] < 0.05
    identical = np.repeat(accuracy + 0.2 * rng.random((90, 1)), 4, axis=1)
    found = _specialization(identical, targets)
    assert (found["index"]["p"] == 1).all() and found["heterogeneity"]["p"][0] == 1


def test_activity_null_is_uniform_and_detects_a_weak_branch():
    rng = np.random.default_rng(2)
    parts = [slice(0, 4)]
    p = [activity.norm_evidence(rng.gamma(2.0, size=(40, 4)), parts, P, 0, 0.95,
                                np.random.default_rng(i))["share"]["p"][0] for i in range(RUNS)]
    assert uniform(p) > 0.01
    norms = rng.gamma(2.0, size=(40, 4))
    norms[:, 0] *= 0.5
    assert activity.norm_evidence(norms, parts, P, 0, 0.95, rng)["share"]["p"][0] == pytest.approx(1 / (P + 1))


def test_routing_null_is_uniform_and_detects_an_unbalanced_router():
    rng = np.random.default_rng(3)

    def gates(bias):
        logits = rng.normal(size=(40, 4)) + bias
        return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)

    p = [activity.routing_evidence(gates(0), P, 0, 0.95, np.random.default_rng(i))["p"] for i in range(RUNS)]
    assert uniform(p) > 0.01
    found = activity.routing_evidence(gates(np.array([2.0, 0, 0, 0])), P, 50, 0.95, rng)
    assert found["p"] == pytest.approx(1 / (P + 1)) and found["ci"][0] <= found["observed"] <= found["ci"][1]
    assert found["band"][0] <= found["null"] <= found["band"][1]


def test_class_filter_null_is_uniform_and_detects_a_class_selective_feature():
    rng = np.random.default_rng(4)
    targets = np.repeat(np.arange(3), 20)
    p = [class_filters.selectivity_evidence(rng.gamma(2.0, size=(60, 2)), targets, 3, P, 0, 0.95,
                                            np.random.default_rng(i))["p"][0] for i in range(RUNS)]
    assert uniform(p) > 0.01
    features = rng.gamma(2.0, size=(60, 2))
    features[targets == 1, 0] += 3
    found = class_filters.selectivity_evidence(features, targets, 3, P, 0, 0.95, rng)
    assert found["p"][0] == pytest.approx(1 / (P + 1)) and found["p"][1] > 0.05


def test_kernel_null_is_uniform():
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(3), 40)  # enough kernels that ARI values rarely tie
    p = []
    for i in range(RUNS):
        points = rng.normal(size=(120, 2))
        p.append(label_agreement(points, labels, cluster(points, 3, i), P, 120, i).p[[0, 4]])  # KMeans ARI, silhouette
    p = np.array(p)
    assert uniform(p[:, 0]) > 0.01 and uniform(p[:, 1]) > 0.01


def test_covariance_null_is_uniform_and_detects_a_shared_component():
    rng = np.random.default_rng(6)
    p = [covariance.evidence(rng.normal(size=(40, 3, 4)) + 1.0, P, 0, 0.95, np.random.default_rng(i))["p"]
         for i in range(RUNS)]
    assert uniform(p) > 0.01
    shared = rng.normal(size=(40, 1, 4))
    found = covariance.evidence(shared + 0.5 * rng.normal(size=(40, 3, 4)), P, 0, 0.95, rng)
    assert found["p"] == pytest.approx(1 / (P + 1)) and found["observed"] > found["null"]


def _nad(rng, weights, features, labels, masks, permutations=P):
    """Class masks over the 12 features of a linear classifier ``weights [12, 3]``."""
    def predict(mask):
        return ((features * mask["f"].numpy()) @ weights).argmax(1)

    hard = [{"f": torch.from_numpy(m.astype(np.float32))} for m in masks]
    return mask_evidence(predict, hard, labels, permutations, 0, 0.95, rng, progress=False)


def test_nad_random_mask_null_is_uniform_and_detects_masks_that_bias_toward_their_class():
    rng = np.random.default_rng(7)
    labels = np.repeat(np.arange(3), 100)  # enough images that the measures rarely tie
    weights = np.kron(np.eye(3), np.ones((4, 1)))  # features 4c..4c+3 vote for class c
    p = []
    for i in range(RUNS):
        features = rng.normal(size=(300, 12)) + 1.5 * weights[:, labels].T
        masks = [rng.permutation(12) < 6 for _ in range(3)]  # random masks: the null is true
        p.append(_nad(np.random.default_rng(i), weights, features, labels, masks)["p"][-1])  # separation, bias
    p = np.array(p)
    assert uniform(p[:, 0]) > 0.01 and uniform(p[:, 1]) > 0.01
    features = rng.normal(size=(300, 12)) + 1.5 * weights[:, labels].T
    own = [np.isin(np.arange(12), np.arange(4 * c, 4 * c + 4)) | (np.arange(12) == (4 * c + 4) % 12)
           for c in range(3)]  # each class keeps its own 4 features (and one more): every image leans toward c
    found = _nad(rng, weights, features, labels, own)
    assert found["p"][-1, 1] == pytest.approx(1 / (P + 1)) and found["measures"][-1, 1] > 2 * found["null"][-1, 1]
