"""The two reproductions (``docs/reproductions.md``): their measures against plain transcriptions, and each
experiment end to end at a small size, through the CLI."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, hessian

from probekit import open_results
from probekit.measures.blocks import off_block_share
from probekit.measures.routing import dispatch_counts, dispatch_entropy
from probekit.zoo.hessian_classes import BranchedHidden, exact_hessian, random_block_shares
from probekit.zoo.moe_synthetic import MoeConfig, cluster_data


def test_dispatch_entropy_is_the_conditional_entropy_of_the_cluster_given_the_expert():
    rng = np.random.default_rng(0)
    clusters = rng.integers(4, size=4000)
    one_each = np.eye(8)[clusters * 2]  # every expert sees one cluster (or none)
    assert dispatch_entropy(dispatch_counts(one_each, clusters, 4)) == 0
    mixed = np.eye(8)[rng.integers(8, size=4000)]  # routing that ignores the clusters
    assert dispatch_entropy(dispatch_counts(mixed, clusters, 4)) == pytest.approx(math.log(4), abs=0.01)
    counts = rng.integers(0, 50, size=(4, 8))
    n_m = counts.sum(0)
    expected = -sum(n_m[m] / counts.sum() * sum(counts[k, m] / n_m[m] * math.log(counts[k, m] / n_m[m])
                                               for k in range(4) if counts[k, m]) for m in range(8) if n_m[m])
    assert dispatch_entropy(counts) == pytest.approx(expected, rel=1e-12)


def test_cluster_data_has_one_feature_one_centre_and_one_noise_patch_per_sample():
    config = MoeConfig(train=500)
    generator = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(config.dim, 8, generator=generator))[0].T
    x, y, cluster = cluster_data(500, config, basis, generator)
    weights = torch.einsum("npd,kd->npk", x, basis)  # each patch's coordinates on v_1..v_4, c_1..c_4
    for i in range(0, 500, 37):
        signal = weights[i, :, cluster[i]]
        centre = weights[i, :, 4 + cluster[i]]
        assert ((signal * y[i] >= 0.5 - 1e-5) & (signal * y[i] <= 2 + 1e-5)).sum() >= 1
        assert ((centre >= 1 - 1e-5) & (centre <= 2 + 1e-5)).sum() == 1
    assert set(y.unique().tolist()) == {-1.0, 1.0} and set(cluster.unique().tolist()) == {0, 1, 2, 3}


def test_the_closed_form_hessian_is_autograd_s():
    torch.manual_seed(0)
    model = BranchedHidden(7, 5, 3).double()
    x, y = torch.randn(40, 7, dtype=torch.float64), torch.randint(5, (40,))
    names, shapes = zip(*[(k, p.shape) for k, p in model.named_parameters()], strict=True)
    sizes = [math.prod(s) for s in shapes]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(theta):
        params = {k: t.reshape(s) for k, t, s in zip(names, theta.split(sizes), shapes, strict=True)}
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    np.testing.assert_allclose(exact_hessian(model, x, y), hessian(loss)(flat).numpy(), atol=1e-13)


def test_random_blocks_are_the_share_of_a_shuffled_blocking():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(30, 30))
    h = h + h.T
    slices = {"a": slice(0, 10), "b": slice(10, 25), "c": slice(25, 30)}
    shares = random_block_shares(h, slices, 3, np.random.default_rng(1))
    draw, labels = np.random.default_rng(1), np.repeat([0, 1, 2], [10, 15, 5])
    for share in shares:
        order = np.argsort(draw.permutation(labels), kind="stable")
        assert share == pytest.approx(off_block_share(h[np.ix_(order, order)], slices), rel=1e-12)


def test_hessian_classes_end_to_end(cli, tmp_path):
    code, stdout, stderr = cli("experiment", "hessian-classes", "--classes", "4,40", "--steps", "20",
                               "--permutations", "9", "--out", tmp_path / "h.zarr", "--quiet")
    assert code == 0, stderr
    ds = open_results(tmp_path / "h.zarr")["hessian-classes"].to_dataset()
    assert ds.off_block_share.dims == ("classes", "seed", "state") and list(ds.n_params.values) == [8 * 504, 8 * 540]
    assert ((ds.off_block_share >= 0) & (ds.off_block_share <= 1)).all()
    assert ((ds.off_block_share_p > 0) & (ds.off_block_share_p <= 1)).all()
    code, _, stderr = cli("experiment", "hessian-classes", "--classes", "10,x", "--out", tmp_path / "bad.zarr")
    assert code != 0 and "--classes must be comma-separated integers" in stderr and not (tmp_path / "bad.zarr").exists()


def test_moe_synthetic_end_to_end_routes_clusters_apart_with_nonlinear_experts(cli, tmp_path):
    """One seed at a quarter of the data: the nonlinear mixture already sends each cluster to its own experts
    (dispatch entropy far below the shuffled-cluster null)."""
    code, stdout, stderr = cli("experiment", "moe-synthetic", "--seeds", "1", "--train", "4000", "--test", "2000",
                               "--steps", "200", "--permutations", "19", "--resamples", "20",
                               "--out", tmp_path / "m.zarr", "--quiet")
    assert code == 0, stderr
    ds = open_results(tmp_path / "m.zarr")["moe-synthetic"].to_dataset()
    assert list(ds.model.values) == ["nonlinear", "linear", "single"] and ds.accuracy.dims == ("model", "seed")
    nonlinear = ds.sel(model="nonlinear", seed=0)
    assert float(nonlinear.dispatch_entropy) < 0.4 < float(nonlinear.dispatch_entropy_null)
    assert float(nonlinear.dispatch_entropy_p) == pytest.approx(1 / 20)
    assert int(nonlinear.dispatch_count.sum()) == 2000
    assert np.isnan(float(ds.dispatch_entropy.sel(model="single", seed=0)))
