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
