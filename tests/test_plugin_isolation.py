"""Third-party plugins from the outside, installed as distributions (a ``.dist-info`` with entry points on the
path): a broken one is left out with one warning line and the rest works; a plugin written against the 0.1 docs
(``from probekit.schema import branch_coords``) still runs, with a deprecation warning."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from probekit import open_results

PROBEKIT = str(Path(sys.executable).with_name("probekit"))
RUN = ["run", "--model", "digits-branched8", "--data", "digits:test", "--limit", "16", "--batch-size", "8",
       "--quiet"]

# the 0.1 docs' example (docs/writing-plugins.md of probekit 0.1), word for word
PEAK_01 = '''
from dataclasses import dataclass
import torch, xarray as xr
from probekit import Analysis, hookimpl
from probekit.schema import branch_coords

@dataclass
class PeakOptions:
    relative: bool = False          # --option peak.relative=true

class Peak(Analysis):
    name = "peak"
    Options = PeakOptions
    merge_rules = {"peaks": "max"}  # how two shards' state combine (for --nproc and --resume)

    def __init__(self, context, options):
        super().__init__(context, options)
        self.peaks = {l.name: torch.zeros(len(l.branches)) for l in context.branchset.layers}

    def update(self, batch):                      # streaming: O(branches) memory
        for layer, r in batch.responses.items():  # r: [N, K, D]
            self.peaks[layer] = torch.maximum(self.peaks[layer], r.abs().amax(dim=(0, 2)).cpu())

    def finalize(self):
        values = torch.cat([self.peaks[l.name] for l in self.context.branchset.layers])
        return xr.Dataset({"peak": ("branch", values.numpy(), {"long_name": "peak |response|"})},
                          coords=branch_coords(self.context))

@hookimpl
def probekit_register_analyses(register):
    register(Peak)
'''

BROKEN = {
    "import": "from probekit.schema import no_such_helper\n",
    "register": "from probekit import hookimpl\n\n@hookimpl\ndef probekit_register_analyses(register):\n"
                "    raise RuntimeError('boom')\n",
    "typo": "from probekit import hookimpl\n\n@hookimpl\ndef probekit_register_analysis(register):\n    pass\n",
}


def install(site: Path, name: str, source: str) -> None:
    """A distribution ``name`` with module ``<name>_plugin`` and a ``probekit`` entry point ``name``."""
    module = f"{name.replace('-', '_')}_plugin"
    (site / f"{module}.py").write_text(source)
    info = site / f"{module}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[probekit]\n{name} = {module}\n")


def with_site(site: Path) -> dict:
    """The environment with ``site`` first on the path (after it, what the caller had: a scratch copy of probekit
    in tests/security/mutate.py)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1"}


def probekit(site: Path, *args, cwd: Path):
    env = with_site(site)
    return subprocess.run([PROBEKIT, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=600)


def warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("fault", sorted(BROKEN))
def test_a_broken_plugin_is_left_out_with_one_line_and_the_rest_works(tmp_path, fault):
    site = tmp_path / "site"
    site.mkdir()
    install(site, "broken", BROKEN[fault])
    listed = probekit(site, "plugins", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "activity" in listed.stdout
    assert [line for line in listed.stdout.splitlines() if line.startswith("broken plugin broken: left out")]
    lines = warning_lines(listed.stderr)
    assert len(lines) == 1 and lines[0].startswith("probekit: warning: plugin 'broken' is left out"), lines
    asked = probekit(site, *RUN, "--plugins", "broken", "--out", "b.zarr", cwd=tmp_path)
    errors = [line for line in warning_lines(asked.stderr) if line.startswith("probekit: error:")]
    assert asked.returncode == 2 and len(errors) == 1 and "'broken' is left out" in errors[0], asked.stderr
    assert "Traceback" not in asked.stderr and not (tmp_path / "b.zarr").exists()
    if fault != "import":
        return  # the rest does not depend on how the plugin broke
    ran = probekit(site, *RUN, "--plugins", "activity", "--out", "r.zarr", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert open_results(tmp_path / "r.zarr")["activity"].norm.size == 8
    loaded = subprocess.run([sys.executable, "-c", "import probekit; print(type(probekit.load_model("
                             "'digits-branched8').module).__name__)"], capture_output=True, text=True,
                            env=with_site(site), timeout=300)
    assert loaded.returncode == 0 and loaded.stdout.strip(), loaded.stderr


def test_a_plugin_written_against_the_01_docs_runs_with_a_deprecation_warning(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    install(site, "peak", PEAK_01)
    ran = probekit(site, *RUN, "--plugins", "peak,activity", "--out", "p.zarr", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert all("deprecated" in line for line in warning_lines(ran.stderr)), ran.stderr
    tree = open_results(tmp_path / "p.zarr")
    peak = tree["peak"].peak
    assert list(peak.branch.values) == list(tree["activity"].branch.values)
    assert np.all(peak.values > 0) and tree["peak"].attrs["plugin"] == "peak"
