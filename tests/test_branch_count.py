"""``probekit experiment branch-count`` end to end on a few real CIFAR-10 images (Fig. 5 left)."""

import json

import numpy as np

from probekit import open_results
from test_cifar_training import tiny_cifar


def test_sweep_trains_probes_and_resumes(cli, tmp_path, shared_data):
    root = tiny_cifar(shared_data, tmp_path, per_class=2)
    args = ["experiment", "branch-count", "--data-root", root, "--branches", "1,3", "--epochs", "1",
            "--train-limit", "16", "--probe-data", f"cifar10:{root}:test", "--checkpoint-dir", tmp_path / "ck",
            "--quiet", "--report"]
    code, out, err = cli(*args, "--out", tmp_path / "a.zarr")
    assert code == 0, err
    node = open_results(tmp_path / "a.zarr")["branch-count"]
    assert list(node.n_branches.values) == [1, 3]
    assert (node.n_active + node.n_silent).values.tolist() == [1, 3]
    relative = node.relative_norm.values
    assert np.isnan(relative[0, 1:]).all() and np.nanmax(relative[1]) == 1.0
    assert node.attrs["n_samples"] == 20 and json.loads(node.attrs["options"])["train_limit"] == 16
    assert (tmp_path / "a-report" / "branch-count-counts.png").is_file()
    history = (tmp_path / "ck" / "M3" / "last.pt").stat().st_mtime_ns
    code, _, err = cli(*args, "--out", tmp_path / "b.zarr")  # a rerun reuses the finished models
    assert code == 0, err
    assert (tmp_path / "ck" / "M3" / "last.pt").stat().st_mtime_ns == history
    again = open_results(tmp_path / "b.zarr")["branch-count"]
    np.testing.assert_array_equal(again.relative_norm.values, relative)


def test_missing_data_root_is_one_clear_error(cli, tmp_path):
    code, _, err = cli("experiment", "branch-count", "--out", tmp_path / "x.zarr")
    assert code == 2 and "needs --data-root" in err and not (tmp_path / "x.zarr").exists()
