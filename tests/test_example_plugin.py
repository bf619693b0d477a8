"""The example third-party plugin package: installed with pip, found through its entry point."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr

from conftest import REPO

EXAMPLE = REPO / "examples" / "probekit-peak"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(EXAMPLE)],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        pytest.fail(f"pip install of the example plugin failed:\n{result.stderr[-2000:]}")
    return target


def _probekit(target: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "probekit", *args], capture_output=True, text=True, env=env)


def test_installed_plugin_is_listed_and_runs(installed, tmp_path):
    listing = _probekit(installed, "plugins")
    assert "peak 0.2.0" in listing.stdout
    out = tmp_path / "peak.zarr"
    result = _probekit(installed, "run", "--model", "digits-branched8", "--data", "digits:test", "--plugins",
                       "activity,peak", "--option", "peak.relative=true", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    peak = xr.open_datatree(str(out), engine="zarr")["peak"]
    assert peak.attrs["plugin_version"] == "0.2.0" and float(peak.peak.max()) == 1.0
    assert peak.peak.attrs["units"] == "1"


def test_plugin_dataset_and_its_errors(installed, tmp_path):
    bad = _probekit(installed, "run", "--model", "toy1", "--data", "sine:x", "--plugins", "peak",
                    "--out", str(tmp_path / "s.zarr"), "--quiet")
    assert bad.returncode == 2 and bad.stderr.strip() == "probekit: error: sine data needs a count, sine:N, not 'x'"
