"""Data-parallel probing: a 2-process gloo run equals the single-process run."""

import subprocess
import sys

import numpy as np
import pytest

from probekit import open_results
from probekit.run.distributed import Ranks, shard_of

PLUGINS = "activity,covariance,specialization,intra-class,class-filters"


def run_args(out, *extra):
    return ["run", "--model", "digits-branched8", "--data", "digits:test", "--limit", "200", "--batch-size", "32",
            "--plugins", PLUGINS, "--out", str(out), "--quiet", *extra]


def test_two_process_gloo_run_equals_the_single_process_run(cli, tmp_path):
    code, _, err = cli(*run_args(tmp_path / "one.zarr"))
    assert code == 0, err
    two = subprocess.run([sys.executable, "-m", "probekit", *run_args(tmp_path / "two.zarr", "--nproc", "2")],
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("wrote ") == 1  # rank 0 speaks for both
    one, both = open_results(tmp_path / "one.zarr"), open_results(tmp_path / "two.zarr")
    assert both.attrs["probekit_status"] == "complete"
    for node in PLUGINS.split(","):
        a, b = one[node].to_dataset(), both[node].to_dataset()
        assert set(a.data_vars) == set(b.data_vars), node
        for name in a.data_vars:
            x, y = a[name].values, b[name].values
            if x.dtype.kind in "fc":
                np.testing.assert_allclose(y, x, rtol=1e-6, atol=1e-9, equal_nan=True, err_msg=f"{node}.{name}")
            else:
                np.testing.assert_array_equal(y, x, err_msg=f"{node}.{name}")
    # both ranks wrote their own rows of the per-sample arrays (rank 1 owns positions 128..199)
    assert np.abs(both["activity"].response_norm.values[128:]).sum() > 0


def test_shards_are_disjoint_aligned_and_cover_everything():
    for n in (1, 63, 64, 200, 1000, 1001):
        for world in (1, 2, 3, 5):
            shards = [shard_of(n, Ranks(r, world, r)) for r in range(world)]
            assert [i for s in shards for i in s] == list(range(n))
            assert all(s.start % 64 == 0 for s in shards if len(s))


def test_an_analysis_without_merge_rules_is_refused_before_launching(cli, tmp_path, monkeypatch):
    from probekit_plugins.covariance import Covariance

    monkeypatch.setattr(Covariance, "merge_rules", None)
    code, _, err = cli(*run_args(tmp_path / "x.zarr", "--nproc", "2"))
    assert code == 2 and "does not declare how its state merges" in err
    assert not (tmp_path / "x.zarr").exists()


@pytest.mark.parametrize("bad", ["0", "-1"])
def test_nproc_must_be_positive(cli, tmp_path, bad):
    code, _, err = cli(*run_args(tmp_path / "x.zarr", "--nproc", bad))
    assert code == 2 and "--nproc must be at least 1" in err
