import re
import subprocess
import sys

from conftest import REPO
from helpers import run_analyses


def test_read_results_example_runs_on_a_real_store(tmp_path):
    run_analyses(tmp_path, "toy2", "toy2", ["activity", "covariance"])
    store = next(tmp_path.glob("*.zarr"))
    result = subprocess.run([sys.executable, str(REPO / "examples" / "read_results.py"), str(store)],
                            capture_output=True, text=True, check=True)
    assert re.match(r"model: \d+ active, silent: branches\.\d+", result.stdout)
    assert "most correlated pair" in result.stdout


def test_held_out_cats_example_decomposes_and_finds_eyes(tmp_path, shared_data):
    """The bundled cat generator on the 18 sample cats it was not trained on, with the roles the docs report."""
    from probekit import open_results

    out = tmp_path / "cats"
    args = [sys.executable, str(REPO / "examples" / "held_out_cats.py"), "--data-root", str(shared_data),
            "--out", str(out), "--quiet", "--option", "chan-vese.init=5", "--option", "chan-vese.segment=init"]
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    tree = open_results(out / "cats.zarr")
    decomposition = tree["decomposition"]
    assert decomposition.sizes["sample"] == 18
    assert int((decomposition.energy_share >= 0.05).sum()) >= 3
    assert float(decomposition.mean_abs_correlation) <= 0.3 and float(decomposition.mean_psnr) >= 20
    found = tree["chan-vese"].found.values
    assert found.sum() >= 12  # 16 of 18 when this was written
    assert (out / "cats-report" / "chan-vese-overlays.png").is_file()
    again = subprocess.run(args, capture_output=True, text=True)
    assert again.returncode != 0 and "exists; choose another --out" in again.stderr
