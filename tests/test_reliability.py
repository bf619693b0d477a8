"""Faults and bad input (docs/reliability.md): each test backs one row of its table."""

import json
import os
import signal
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

from probekit import Analysis, SummedBranches, open_results
from probekit.errors import ProbekitError
from probekit.hookspecs import hookimpl
from probekit.plugins import manager
from probekit.run.registry import analyses
from probekit.store.results import StoreWriter

from helpers import assert_activity_set_aside
from plugin_scripts import plugin_script


class SqrtBranch(nn.Module):
    """``sqrt`` of the first input feature: NaN for the samples where it is negative."""

    def forward(self, x):
        return x[:, :2].sqrt()


def test_nan_outputs_are_flagged_not_averaged(cli, tmp_path):
    path = tmp_path / "nan.pt"
    torch.save(SummedBranches([nn.Linear(4, 2), SqrtBranch()]), path)
    out = tmp_path / "nan.zarr"
    code, stdout, err = cli("run", "--model", path, "--trust-pickle", "--data", "random:4", "--limit", "20",
                            "--plugins", "activity,covariance", "--out", out, "--quiet")
    assert code == 0, err
    x = torch.stack([torch.randn(4, generator=torch.Generator().manual_seed(i)) for i in range(20)])
    expected = int((x[:, :2] < 0).any(1).sum())
    tree = open_results(out)
    assert 0 < expected < 20 and tree.attrs["nonfinite_samples"] == expected
    first = json.loads(tree.attrs["nonfinite_sample_ids"])[0]
    assert first == str(int(np.flatnonzero((x[:, :2] < 0).any(1).numpy())[0]))
    assert np.isnan(tree["activity"].norm.values[1])  # the NaN branch's statistic is NaN, not a partial average
    assert f"WARNING: {expected} samples gave NaN or Inf" in stdout


def test_finite_runs_say_so(cli, tmp_path):
    out = tmp_path / "ok.zarr"
    code, stdout, _ = cli("run", "--model", "toy2", "--data", "toy2", "--plugins", "activity", "--out", out,
                          "--quiet")
    assert code == 0 and open_results(out).attrs["nonfinite_samples"] == 0 and "WARNING" not in stdout


class Escape(Analysis):
    name = "../../escaped"
    merge_rules = {}

    def update(self, batch):
        pass

    def finalize(self):
        return xr.Dataset()


class EscapePlugin:
    @hookimpl
    def probekit_register_analyses(register):
        register(Escape)


def test_path_traversal_names_are_rejected(cli, tmp_path):
    pm = manager()
    pm.register(EscapePlugin, name="escape-test")
    try:
        with pytest.warns(UserWarning, match="not a valid analysis or node name"):
            assert "../../escaped" not in analyses()
        with pytest.warns(UserWarning):
            code, _, err = cli("run", "--model", "toy2", "--data", "toy2", "--plugins", "../../escaped",
                               "--out", tmp_path / "deep" / "s.zarr", "--quiet")
        assert code == 2 and "unknown plugin" in err
    finally:
        pm.unregister(name="escape-test")
    writer = StoreWriter(tmp_path / "w.zarr")
    for bad in ("../x", "a/b", ".hidden", "", "A"):
        with pytest.raises(ProbekitError, match="not a valid analysis or node name"):
            writer.staging(bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.fixture()
def digits_store(cli, tmp_path):
    out = tmp_path / "s.zarr"
    code, _, err = cli("run", "--model", "digits-branched8", "--data", "digits:test", "--plugins",
                       "activity,covariance", "--out", out, "--quiet")
    assert code == 0, err
    return out


@pytest.mark.parametrize("damage", ["garbage chunk", "deleted chunk", "deleted node"])
def test_a_damaged_node_is_named_and_the_others_stay_readable(cli, digits_store, damage):
    expected = open_results(digits_store)["covariance"].cov.values
    node = digits_store / "activity"
    if damage == "garbage chunk":
        (node / "norm" / "c" / "0").write_bytes(b"garbage")
    elif damage == "deleted chunk":
        (node / "response_norm" / "c" / "0" / "0").unlink()
    else:
        shutil.rmtree(node)
    assert_activity_set_aside(cli, digits_store, expected)


def test_a_truncated_root_is_one_clear_error(cli, digits_store):
    root = digits_store / "zarr.json"
    root.write_bytes(root.read_bytes()[:100])
    code, _, err = cli("show", digits_store)
    assert code == 2 and "is not a probekit results store" in err and len(err.strip().splitlines()) == 1


FILE_LIMIT_RUN = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
from probekit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_full_disk_fails_clearly_and_keeps_what_was_written(cli, tmp_path, digits_store):
    """The disk "fills" (every file is capped at 3 KB) while the run writes its store. Mutation: the runner not
    calling ``drop_staging`` on an ``OSError`` -> the staging folder stays (the disk stays full) and this test
    fails."""
    out = tmp_path / "full.zarr"
    result = subprocess.run([sys.executable, "-c", FILE_LIMIT_RUN.format(limit=3000), "run", "--model",
                             "digits-branched8", "--data", "digits:test", "--plugins", "covariance,activity",
                             "--option", "covariance.permutations=0", "--option", "covariance.resamples=0",  # no sketch
                             "--out", str(out), "--quiet"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("probekit: error:")]
    assert errors and all("File too large" in line for line in errors), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert open_results(digits_store)["activity"].sizes["sample"] == 360  # an earlier store is untouched
    with pytest.warns(UserWarning, match="incomplete"):  # the run died before consolidating: never "complete"
        tree = open_results(out)  # the new store opens: the node that fit is intact, the other is named as failed
    assert tree.attrs["probekit_status"] == "incomplete" and "activity" in json.loads(tree.attrs["errors"])
    assert tree["covariance"].cov.shape == (8, 8)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("full.zarr.")] == []  # no staging left


CRASHING_RUN = plugin_script("""
class Crash(Analysis):
    name = "crash"
    merge_rules = {}

    def update(self, batch):
        if os.environ.get("CRASH_AT") and int(batch.index[0]) >= int(os.environ["CRASH_AT"]):
            # SIGKILL: no cleanup, no flush, like a power cut; SIGINT: Ctrl-C
            os.kill(os.getpid(), getattr(signal, os.environ.get("CRASH_SIGNAL", "SIGKILL")))

    def finalize(self):
        return xr.Dataset()
""", "Crash")
RESUMABLE = ["activity", "covariance", "specialization", "intra-class", "class-filters"]


def crashing_run(out, *extra, crash_at=None, crash_signal="SIGKILL"):
    args = ["run", "--model", "digits-branched8", "--data", "digits:test", "--batch-size", "8",
            "--checkpoint-every", "5", "--plugins", ",".join(["crash", *RESUMABLE]), "--out", str(out), "--quiet",
            *extra]
    env = {**os.environ, "CRASH_AT": str(crash_at), "CRASH_SIGNAL": crash_signal} if crash_at else \
        {k: v for k, v in os.environ.items() if k != "CRASH_AT"}
    return subprocess.run([sys.executable, "-c", CRASHING_RUN, *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_a_killed_run_resumes_without_counting_any_sample_twice(tmp_path):
    whole = crashing_run(tmp_path / "whole.zarr")
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = crashing_run(tmp_path / "r.zarr", crash_at=180)  # SIGKILL at sample 180; checkpoints every 40
    assert killed.returncode == -signal.SIGKILL
    with pytest.warns(UserWarning, match="incomplete"):
        assert open_results(tmp_path / "r.zarr").attrs["probekit_status"] == "incomplete"
    again = crashing_run(tmp_path / "r.zarr")
    assert again.returncode == 2 and "holds an interrupted run: add --resume to continue it" in again.stderr
    resumed = crashing_run(tmp_path / "r.zarr", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = open_results(tmp_path / "whole.zarr"), open_results(tmp_path / "r.zarr")
    for node in RESUMABLE:
        assert_equal_nodes(a[node].to_dataset(), b[node].to_dataset())
    assert int(b["activity"].class_norm.notnull().sum()) and b.attrs["probekit_status"] == "complete"
    done = crashing_run(tmp_path / "r.zarr", "--resume")
    assert done.returncode == 2 and "only an interrupted (incomplete) run can be resumed" in done.stderr


def test_ctrl_c_after_a_checkpoint_says_how_to_resume(tmp_path):
    stopped = crashing_run(tmp_path / "c.zarr", crash_at=180, crash_signal="SIGINT")
    assert stopped.returncode == 130
    assert stopped.stderr.strip().endswith("probekit: interrupted; run the same command with --resume to continue "
                                           "from the last checkpoint")
    resumed = crashing_run(tmp_path / "c.zarr", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]


def assert_equal_nodes(a, b):
    assert set(a.data_vars) == set(b.data_vars)
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def test_resume_refuses_other_settings(tmp_path):
    crashing_run(tmp_path / "r.zarr", crash_at=100)
    other = crashing_run(tmp_path / "r.zarr", "--resume", "--seed", "3")
    assert other.returncode == 2 and "used other settings" in other.stderr
    fresh = crashing_run(tmp_path / "new.zarr", "--resume")
    assert fresh.returncode == 2 and "no interrupted run to resume" in fresh.stderr


def test_sigterm_unlocks_the_store_and_exits_143(tmp_path):
    """``kill``/``timeout`` send SIGTERM; the run cleans up as for Ctrl-C. Mutation: no SIGTERM handler -> the
    process dies without running ``finally`` (exit -15) and leaves its lock file: this test fails."""
    import time

    out = tmp_path / "t.zarr"
    proc = subprocess.Popen([sys.executable, "-m", "probekit", "run", "--model", "digits-branched8", "--data",
                             "random:1,8,8", "--batch-size", "1", "--limit", "100000", "--checkpoint-every", "0",
                             "--plugins", "activity", "--out", str(out), "--quiet"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "zarr.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be terminated"
    proc.terminate()
    _, err = proc.communicate(timeout=60)  # also closes the pipe
    assert proc.returncode == 143 and "probekit: terminated" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no checkpoint: nothing to resume, nothing left


def test_a_signal_right_after_the_store_is_made_leaves_nothing(tmp_path, monkeypatch):
    """SIGTERM (raised as :class:`Terminated`) between the store's creation and the first batch: the
    half-made store is removed, as for a signal later on."""
    from probekit.cli import Terminated
    from probekit.run import runner
    from probekit.run.runner import execute, RunSpec

    def terminated(*args, **kwargs):
        raise Terminated()

    monkeypatch.setattr(runner, "RunContext", terminated)
    with pytest.raises(Terminated):
        execute(RunSpec(model="digits-branched8", data="digits:test", plugins=["activity"], limit=8,
                        out=str(tmp_path / "t.zarr")))
    assert sorted(p.name for p in tmp_path.iterdir()) == []
