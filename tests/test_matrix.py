"""Every bundled analysis, alone and in every pair, on tiny real models, through every way a run can be cut up:
``--checkpoint-every 1``; killed after a checkpoint and ``--resume``d; ``--nproc 2``. Each must give what the
uninterrupted single-process run of all the model's analyses together gives: bitwise, except float sums merged
across ``--nproc`` shards, which agree within :data:`SHARD_TOLERANCE` (docs/reliability.md, "Combinations").

The kill in the generated cells is a snapshot of the run's files (store, staging, checkpoint, lock) taken right
after its second checkpoint: exactly what SIGKILL at that moment leaves. One cell per model kills a real child
process with SIGKILL at an arbitrary moment instead."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from probekit import open_results
from probekit.run import checkpoint as run_checkpoint
from probekit.run.runner import RunSpec, execute
from probekit.zoo.generator import BranchedGenerator

pytestmark = pytest.mark.timeout(600)

PROBEKIT = str(Path(sys.executable).with_name("probekit"))
LIMIT, BATCH = 64, 16  # four batches in the generated cells
NPROC_LIMIT, NPROC_BATCH = 128, 32  # --nproc 2 gives each rank one 64-sample shard (and the real SIGKILL test)
KILL_AFTER = 2  # checkpoints
SHARD_TOLERANCE = {"rtol": 1e-5, "atol": 1e-7}  # float32 sums added in another order (two shards, then merged)
BITWISE_ACROSS_SHARDS = {"covariance"}  # its sums are compensated ("compensated-sum" merge rule)
CLASSIFIER = ["activity", "covariance", "gradient-factors", "hessian", "specialization", "intra-class",
              "attribution", "class-filters", "kernels"]
GENERATOR = ["decomposition", "chan-vese", "activity", "covariance"]
OPTIONS = {"kernels": {"permutations": "10"}}  # the permutation count does not change what is merged
# chan-vese picks its component roles from each process's first samples, so --nproc needs them given (its docs)
NPROC_OPTIONS = {"chan-vese": {"init": "0", "segment": "init"}}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """``{kind: (model spec, data spec, analyses)}``: the digits classifier and a tiny generator."""
    torch.manual_seed(0)
    generator = tmp_path_factory.mktemp("models") / "gen.pt"
    torch.save(BranchedGenerator(branches=4, widths=(4, 8), resolution=16).eval(), generator)
    return {"classifier": ("digits-branched8", "digits:test", CLASSIFIER),
            "generator": (str(generator), "random:3,24,24", GENERATOR)}


def spec(model, data, plugins, out, options=OPTIONS, limit=LIMIT, batch_size=BATCH, **kwargs) -> RunSpec:
    return RunSpec(model=model, data=data, plugins=list(plugins), out=str(out), limit=limit, batch_size=batch_size,
                   progress=False, options={p: options[p] for p in plugins if p in options}, **kwargs)


def nodes(store) -> dict[str, xr.Dataset]:
    tree = open_results(store)
    assert tree.attrs["probekit_status"] == "complete", tree.attrs.get("errors")
    return {name: node.to_dataset().load() for name, node in tree.children.items()}


def assert_same(got: xr.Dataset, expected: xr.Dataset, where: str, tolerance: dict | None = None) -> None:
    """Every variable and coordinate equal (bitwise, NaN equal to NaN), or float ones within ``tolerance``."""
    assert sorted(got.variables) == sorted(expected.variables), where
    for name in expected.variables:
        a, b = got[name].values, expected[name].values
        assert a.shape == b.shape and a.dtype == b.dtype, f"{where}: {name}"
        if tolerance is not None and a.dtype.kind in "fc":
            np.testing.assert_allclose(a, b, equal_nan=True, err_msg=f"{where}: {name}", **tolerance)
        elif a.dtype.kind in "fc":
            assert np.array_equal(a, b, equal_nan=True), f"{where}: {name} differs by {np.nanmax(np.abs(a - b))}"
        else:
            assert np.array_equal(a, b), f"{where}: {name}"
    assert got.attrs.get("summary") == expected.attrs.get("summary") or tolerance is not None, where


def plain_runs(models, folder, options=OPTIONS, **sizes) -> dict:
    """Each model's analyses all together, in one process, without checkpoints: ``{kind: {node: Dataset}}``."""
    found = {}
    for kind, (model, data, analyses) in models.items():
        out = folder / f"{kind}.zarr"
        run = execute(spec(model, data, analyses, out, options, checkpoint_every=0, **sizes))
        assert not run.errors, run.errors
        found[kind] = nodes(out)
    return found


@pytest.fixture(scope="module")
def reference(models, tmp_path_factory):
    return plain_runs(models, tmp_path_factory.mktemp("reference"))


@pytest.fixture(scope="module")
def nproc_reference(models, tmp_path_factory):
    return plain_runs(models, tmp_path_factory.mktemp("nproc-reference"), {**OPTIONS, **NPROC_OPTIONS},
                      limit=NPROC_LIMIT, batch_size=NPROC_BATCH)


def cells() -> list:
    return list(_cells())


def _cells():
    for kind, analyses in (("classifier", CLASSIFIER), ("generator", GENERATOR)):
        for size in (1, 2):
            for combination in itertools.combinations(analyses, size):
                yield pytest.param(kind, combination, id=f"{kind}:{'+'.join(combination)}")


@pytest.mark.parametrize(("kind", "combination"), cells())
def test_checkpointed_and_resumed_runs_equal_the_plain_run(kind, combination, models, reference, tmp_path,
                                                           monkeypatch):
    model, data, _ = models[kind]
    out = tmp_path / "run" / "r.zarr"
    snapshot = tmp_path / "killed"
    real_save, saves = run_checkpoint.save, []

    def save_then_snapshot(folder, *args, **kwargs):
        real_save(folder, *args, **kwargs)
        saves.append(1)
        if len(saves) == KILL_AFTER:  # what SIGKILL right now would leave: every file of the run, as it is
            shutil.copytree(out.parent, snapshot, symlinks=True)

    monkeypatch.setattr(run_checkpoint, "save", save_then_snapshot)
    run = execute(spec(model, data, combination, out, checkpoint_every=1))
    assert not run.errors and len(saves) == LIMIT // BATCH, run.errors
    for name, node in nodes(out).items():
        assert_same(node, reference[kind][name], f"--checkpoint-every 1, {name}")
    monkeypatch.setattr(run_checkpoint, "save", real_save)
    shutil.rmtree(out.parent)
    snapshot.rename(out.parent)  # the killed run's files, back where it ran: resume needs the same --out
    run = execute(spec(model, data, combination, out, checkpoint_every=1, resume=True))
    assert not run.errors, run.errors
    resumed = nodes(out)
    assert sorted(resumed) == sorted(combination)
    for name, node in resumed.items():
        assert_same(node, reference[kind][name], f"killed after {KILL_AFTER} checkpoints and resumed, {name}")
    assert sorted(p.name for p in out.parent.iterdir()) == ["r.zarr"]  # no staging or lock left


def cli_args(model, data, analyses, out, options) -> list[str]:
    options = [f"--option={p}.{k}={v}" for p in analyses for k, v in options.get(p, {}).items()]
    return ["run", "--model", model, "--data", data, "--limit", str(NPROC_LIMIT), "--batch-size", str(NPROC_BATCH),
            "--plugins", ",".join(analyses), "--out", str(out), "--quiet", *options]


def child_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow  # about 40 s; two processes are also checked by test_distributed and test_plugin_api by default
@pytest.mark.parametrize("kind", ["classifier", "generator"])
def test_two_processes_equal_one(kind, models, nproc_reference, tmp_path):
    model, data, analyses = models[kind]
    expected = nproc_reference[kind]
    out = tmp_path / "n.zarr"
    done = subprocess.run([PROBEKIT, *cli_args(model, data, analyses, out, {**OPTIONS, **NPROC_OPTIONS}),
                           "--nproc", "2"],
                          capture_output=True, text=True, env=child_env(), timeout=600)
    assert done.returncode == 0, done.stderr
    for name, node in nodes(out).items():
        assert_same(node, expected[name], f"--nproc 2, {name}",
                    None if name in BITWISE_ACROSS_SHARDS else SHARD_TOLERANCE)


def test_a_real_sigkill_then_resume_equals_the_plain_run(models, nproc_reference, tmp_path):
    model, data, analyses = models["classifier"]
    out = tmp_path / "k.zarr"
    args = [*cli_args(model, data, analyses, out, OPTIONS), "--checkpoint-every", "1"]
    child = subprocess.Popen([PROBEKIT, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=child_env())
    deadline = time.time() + 300
    while time.time() < deadline and child.poll() is None and not any(
            (p / run_checkpoint.CHECKPOINT).exists() for p in tmp_path.glob("k.zarr.tmp-*")):
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere in a later batch, or in the middle of writing a checkpoint
    assert child.poll() is None, "the run ended before it could be killed"
    child.send_signal(signal.SIGKILL)
    child.wait()
    run = execute(spec(model, data, analyses, out, limit=NPROC_LIMIT, batch_size=NPROC_BATCH, checkpoint_every=1,
                       resume=True))
    assert not run.errors, run.errors
    for name, node in nodes(out).items():
        assert_same(node, nproc_reference["classifier"][name], f"SIGKILL and --resume, {name}")
