"""The ``kernels`` analysis: kernel collection, normalisation, scores against planted structure, the CLI."""

import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from probekit import open_results
from probekit.models.branched import SummedBranches
from probekit.models.branches import DiscoveryConfig, discover
from probekit_plugins.kernels.cluster_scores import UmapSettings, cluster, label_agreement, umap_embedding
from probekit.errors import ProbekitError
from probekit_plugins.kernels.kernel_sets import collect_kernels, normalise
from probekit.zoo.resnet import branched_resnet18


def test_summed_branches_give_one_layer_per_shared_conv_path():
    model = branched_resnet18(3, widths=(2, 2, 2, 2))
    layers = collect_kernels(model, discover(model, DiscoveryConfig()))
    assert layers[0].layer == "conv1" and layers[0].weights.shape == (3 * 2, 3, 3, 3)
    assert list(layers[0].branch) == [b for b in ("branches.0", "branches.1", "branches.2") for _ in range(2)]
    assert list(layers[0].out_channel) == [0, 1] * 3
    chosen = collect_kernels(model, discover(model, DiscoveryConfig()), "layer1.*.conv*")
    assert [k.layer for k in chosen] == ["layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2"]
    with pytest.raises(ProbekitError, match="matches no conv layer; the layers are conv1"):
        collect_kernels(model, discover(model, DiscoveryConfig()), "nothing")


def test_grouped_conv_kernels_are_labelled_by_group():
    model = torchvision.models.resnext50_32x4d()
    (layer,) = collect_kernels(model, discover(model, DiscoveryConfig()), "layer1.0.conv2")
    assert layer.weights.shape == (128, 4, 3, 3)
    assert layer.branch[0] == layer.branch[3] != layer.branch[4] and len(set(layer.branch)) == 32
    assert layer.branch[4].endswith("[g=1]")


def test_normalisations():
    rows = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(np.linalg.norm(normalise(rows, "l2")[0]), 1.0)
    centred = normalise(rows, "zero-mean-l2")
    np.testing.assert_allclose(centred[0], np.array([-1.0, 0.0, 1.0]) / np.sqrt(2))
    assert (centred[1] == 0).all() and normalise(rows, "none") is rows
    with pytest.raises(ProbekitError, match="kernels.normalise must be one of"):
        normalise(rows, "z")


def test_planted_branch_clusters_score_high_and_shuffled_labels_do_not():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 27))
    labels = np.repeat(np.arange(4), 25)
    planted = centres[labels] + 0.05 * rng.normal(size=(100, 27))
    embedded = umap_embedding(planted, 0, UmapSettings())
    for points in (embedded, planted):
        scores = label_agreement(points, labels, cluster(points, 4, 0), 50, 2000, 0)
        assert scores.observed[0] > 0.9 and scores.observed[4] > 0.5  # KMeans ARI, silhouette
        assert scores.p[0] == pytest.approx(1 / 51) and abs(scores.null[0]) < 0.1
    unrelated = rng.permutation(labels)
    scores = label_agreement(planted, unrelated, cluster(planted, 4, 0), 50, 2000, 0)
    assert scores.observed[0] < 0.1 and scores.p[0] > 0.05


def planted_model():
    """Two conv branches whose kernels sit near a branch-specific pattern (plus noise)."""
    torch.manual_seed(0)
    model = SummedBranches([nn.Sequential(nn.Conv2d(3, 12, 3), nn.ReLU(), nn.Conv2d(12, 6, 3),
                                          nn.AdaptiveAvgPool2d(1), nn.Flatten()) for _ in range(2)])
    with torch.no_grad():
        for branch in model.branches:
            branch[0].weight.copy_(torch.randn(1, 3, 3, 3) + 0.05 * torch.randn(12, 3, 3, 3))
    return model


def test_cli_run_scores_trained_and_init_and_draws_the_report(cli, tmp_path):
    path = tmp_path / "planted.pt"
    torch.save(planted_model(), path)
    out = tmp_path / "k.zarr"
    code, _, err = cli("run", "--model", path, "--data", "random:3,8,8", "--limit", "2", "--plugins", "kernels",
                       "--option", "kernels.compare_init=true", "--option", "kernels.permutations=30",
                       "--out", out, "--quiet", "--report")
    assert code == 0, err
    node = open_results(out)["kernels"]
    assert list(node.layer.values) == ["0", "2"] and node.sizes["kernel"] == 2 * 12 + 2 * 6
    first = node.score.sel(layer="0", space="raw", metric="ari_kmeans")
    assert float(first.sel(state="trained")) == pytest.approx(1.0)  # planted: two tight clusters
    assert float(node.score_p.sel(state="trained", layer="0", space="raw", metric="ari_kmeans")) < 0.05
    assert float(first.sel(state="init")) < 0.5
    assert node.rgb_kernel.shape == (2, 24, 3, 3, 3) and node.rgb_kernel_branch.values[12] == "branches.1"
    report = tmp_path / "k-report"
    assert {p.name for p in report.glob("kernels-*.png")} == {
        "kernels-umap-trained.png", "kernels-umap-init.png", "kernels-rgb-kernels-trained.png",
        "kernels-rgb-kernels-init.png", "kernels-evidence-score.png"}


def test_bad_option_is_one_clear_line(cli, tmp_path):
    code, _, err = cli("run", "--model", "digits-branched8", "--data", "digits:test", "--limit", "4", "--plugins",
                       "kernels", "--option", "kernels.normalise=cube", "--out", tmp_path / "a.zarr", "--quiet")
    assert code == 2 and "kernels.normalise must be one of" in err and len(err.strip().splitlines()) == 1


def test_help_and_plugin_listing_do_not_import_umap_or_numba():
    script = ("import sys\nfrom probekit.cli import main\n"
              "for argv in (['--help'], ['plugins']):\n"
              "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
              "print(sorted(m for m in ('umap', 'numba', 'pynndescent') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_umap_leaves_torch_thread_count_as_it_was():
    """numba's OpenMP start-up inside UMAP used to reset torch to every core, which made a later training
    loop in the same process 100x slower next to another busy process."""
    from probekit_plugins.kernels.cluster_scores import UmapSettings, umap_embedding

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        umap_embedding(np.random.default_rng(0).normal(size=(30, 5)), 0, UmapSettings(5, 0.1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
