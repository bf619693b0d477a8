"""Stores written before the 1.0 layout still open, show and report (no behaviour change for users)."""

import shutil

import numpy as np

from conftest import REPO
from helpers import run_analyses
from probekit import open_results

OLD = REPO / "tests" / "data" / "toy2-v0.1.zarr"


def test_a_store_written_by_probekit_0_1_opens_shows_and_reports(cli, tmp_path):
    store = tmp_path / "old.zarr"
    shutil.copytree(OLD, store)
    old = open_results(store)
    assert old.attrs["probekit_status"] == "complete" and old["activity"].active.dtype == bool
    fresh = run_analyses(tmp_path, "toy2", "toy2", ["activity", "covariance"])
    np.testing.assert_allclose(old["activity"].norm.values, fresh["activity"].norm.values, rtol=1e-6)
    np.testing.assert_array_equal(old["activity"].active.values, fresh["activity"].active.values == 1)
    np.testing.assert_allclose(old["covariance"].cov.values, fresh["covariance"].cov.values, rtol=1e-5, atol=1e-12)
    code, stdout, _ = cli("show", store)
    assert code == 0 and "[activity]" in stdout and "[covariance]" in stdout
    code, _, err = cli("report", store, "--out", tmp_path / "report")
    assert code == 0 and (tmp_path / "report" / "activity-norms.png").is_file(), err
