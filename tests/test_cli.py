"""The CLI end to end, and every bad input of the acceptance list: one line, no traceback, non-zero exit."""

import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
import torchvision
import xarray as xr
from torch import nn

from probekit import open_results


def test_run_writes_a_store_that_xarray_opens(cli, tmp_path):
    out = tmp_path / "r.zarr"
    code, stdout, _ = cli("run", "--model", "digits-branched8", "--data", "digits:test", "--plugins",
                          "activity,covariance", "--out", out, "--quiet", "--batch-size", "50")
    assert code == 0 and "status:  complete" in stdout
    tree = xr.open_datatree(str(out), engine="zarr")
    assert set(tree.children) == {"activity", "covariance"}
    activity = tree["activity"]
    assert activity.sizes["sample"] == 360 and activity.sizes["branch"] == 8
    assert activity.attrs["plugin"] == "activity" and '"sha256"' in activity.attrs["model"]
    for key in ("created_at", "probekit_version", "plugin_version", "options", "dataset", "torch_version", "seed"):
        assert key in activity.attrs


def test_run_without_out_writes_a_new_timestamped_store(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, stdout, _ = cli("run", "--model", "toy2", "--data", "toy2", "--plugins", "activity", "--quiet")
    stores = list((tmp_path / "probekit-runs").glob("toy2-*.zarr"))
    assert code == 0 and len(stores) == 1 and stores[0].name in stdout
    assert xr.open_datatree(str(stores[0]), engine="zarr")["activity"].sizes["branch"] > 0
    code, _, err = cli("run", "--model", "toy2", "--data", "toy2", "--plugins", "activity", "--resume")
    assert code != 0 and "--resume needs the --out" in err and len(err.strip().splitlines()) == 1


def test_resnext_pickle_gives_one_branch_per_grouped_layer_and_group(cli, tmp_path):
    model_path = tmp_path / "my_resnext.pt"
    torch.save(torchvision.models.resnext50_32x4d(), model_path)
    out = tmp_path / "r.zarr"
    code, _, err = cli("run", "--model", model_path, "--plugins", "activity,covariance", "--data",
                       "random:3,224,224", "--limit", "2", "--out", out, "--quiet")
    assert code == 0, err
    activity = xr.open_datatree(str(out), engine="zarr")["activity"]
    assert activity.sizes["branch"] == 16 * 32
    one = activity.sel(branch="layer3.2.conv2[g=31]")
    assert str(one.branch_layer.values) == "layer3.2.conv2" and int(one.branch_group) == 31


def test_show_and_plugins_and_models(cli, tmp_path):
    out = tmp_path / "r.zarr"
    cli("run", "--model", "toy2", "--data", "toy2", "--plugins", "activity", "--out", out, "--quiet")
    code, stdout, _ = cli("show", out)
    assert code == 0 and "[activity]" in stdout and "active/total in model" in stdout
    code, stdout, _ = cli("plugins")
    from importlib.metadata import version

    assert code == 0 and f"activity {version('probekit')}" in stdout and "probekit_register_analyses" in stdout
    code, stdout, _ = cli("models")
    listed = {line.split()[0]: line for line in stdout.splitlines()}
    assert "weights not bundled" not in listed["digits-branched8"]
    assert "weights not bundled" not in listed["afhq-cat-diffusion9"]
    assert set(listed) >= {"toy1", "toy2", "digits-branched8", "cifar10-branched16", "afhq-cat-branched9",
                           "afhq-cat-diffusion9", "celeba-branched9"}


def _one_line_error(code, stdout, stderr, expected):
    assert code != 0
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("probekit: error:") and expected in lines[0]
    assert "Traceback" not in stderr + stdout


def _bad_inputs(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a model at all")
    evil = tmp_path / "evil.pt"
    torch.save({"x": print}, evil)  # needs builtins.print: not on the safe list
    plain = tmp_path / "plain.pt"
    torch.save(nn.Sequential(nn.Linear(3, 2)), plain)
    existing = tmp_path / "exists.zarr"
    existing.mkdir()
    base = ["--plugins", "activity", "--quiet"]
    fresh = str(tmp_path / "new.zarr")
    return [
        (["--model", tmp_path / "missing.pt", "--data", "toy1", "--out", fresh], "model file not found"),
        (["--model", corrupt, "--data", "toy1", "--out", fresh], "not a PyTorch model file"),
        (["--model", "resnet5000", "--data", "toy1", "--out", fresh], "unknown model"),
        (["--model", evil, "--data", "toy1", "--out", fresh], "builtins.print"),
        (["--model", plain, "--data", "random:3", "--out", fresh], "no branches found"),
        (["--model", "digits-branched8", "--data", "random:3,32,32", "--out", fresh], "3-channel images but the model"),
        (["--model", "toy2", "--data", "random:3,32,32", "--limit", "2", "--out", fresh], "does not fit model"),
        (["--model", "toy1", "--data", "toy1", "--out", fresh, "--plugins", "nope"], "unknown plugin"),
        (["--model", "toy1", "--data", "toy1", "--out", fresh, "--option", "activity.nope=1"], "unknown option"),
        (["--model", "toy1", "--data", "toy1", "--out", fresh, "--option", "activity.threshold=x"], "must be float"),
        (["--model", "toy1", "--data", "toy1", "--out", existing], "already exists"),
        (["--model", "toy1", "--data", "nope", "--out", fresh], "unknown data"),
    ], base


def test_bad_inputs_get_one_error_line(cli, tmp_path):
    cases, base = _bad_inputs(tmp_path)
    for args, expected in cases:
        code, stdout, stderr = cli("run", *base, *args)
        _one_line_error(code, stdout, stderr, expected)
    assert not (tmp_path / "new.zarr").exists()
    assert list((tmp_path / "exists.zarr").iterdir()) == []  # untouched


def test_overwrite_replaces_only_when_the_new_run_is_complete(cli, tmp_path):
    out = tmp_path / "r.zarr"
    cli("run", "--model", "toy1", "--data", "toy1", "--plugins", "activity", "--out", out, "--quiet")
    first = xr.open_datatree(str(out), engine="zarr").attrs["created_at"]
    code, _, _ = cli("run", "--model", "toy1", "--data", "random:3", "--plugins", "activity", "--out", out,
                     "--overwrite", "--quiet")
    assert code != 0  # the new run fails (shape) ...
    assert xr.open_datatree(str(out), engine="zarr").attrs["created_at"] == first  # ... the old store survives
    code, _, _ = cli("run", "--model", "toy2", "--data", "toy2", "--plugins", "activity", "--out", out,
                     "--overwrite", "--quiet")
    assert code == 0 and "toy2" in xr.open_datatree(str(out), engine="zarr").attrs["model"]
    assert not (tmp_path / "r.zarr.new").exists()


def test_a_killed_run_keeps_earlier_stores_and_leaves_its_own_readable(cli, tmp_path):
    """The killed store must exist (the test no longer skips its checks when it is absent). Mutation: ``create``
    not marking the new store ``incomplete`` -> the killed store opens without its warning and this test
    fails."""
    earlier = tmp_path / "earlier.zarr"
    cli("run", "--model", "digits-branched8", "--data", "digits", "--plugins", "activity", "--out", earlier,
        "--quiet")
    killed = tmp_path / "killed.zarr"
    proc = subprocess.Popen(
        [sys.executable, "-m", "probekit", "run", "--model", "digits-branched8", "--data", "random:1,8,8",
         "--batch-size", "1", "--plugins", "activity,covariance", "--out", str(killed), "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not (killed / "zarr.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None and (killed / "zarr.json").exists(), "the run ended before it could be killed"
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert open_results(earlier)["activity"].sizes["sample"] == 1797
    with pytest.warns(UserWarning, match="incomplete"):  # the killed store is there, and says what it is
        tree = open_results(killed)
    assert tree.attrs["probekit_status"] == "incomplete"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_results(earlier)


def test_torchscript_model_pads_short_batches_and_matches_eager(cli, tmp_path, tiny_grouped):
    eager_path, script_path = tmp_path / "eager.pt", tmp_path / "scripted.pt"
    torch.save(tiny_grouped, eager_path)
    torch.jit.script(tiny_grouped).save(str(script_path))
    stores = {}
    for name, path, extra in (("eager", eager_path, ["--trust-pickle"]), ("script", script_path, ["--trust-code"])):
        stores[name] = tmp_path / f"{name}.zarr"
        code, _, err = cli("run", "--model", path, "--data", "random:3,8,8", "--limit", "10", "--batch-size", "4",
                           "--plugins", "activity", "--out", stores[name], "--quiet", *extra)
        assert code == 0, err
    eager, script = (xr.open_datatree(str(stores[k]), engine="zarr")["activity"] for k in ("eager", "script"))
    assert script.sizes["sample"] == 10  # 4 + 4 + a padded batch of 2
    np.testing.assert_allclose(script.response_norm.values, eager.response_norm.values, rtol=1e-5)


def test_help_imports_no_heavy_library():
    code = "import sys\nfrom probekit.cli import build_parser\nbuild_parser().format_help()\n" \
           "print(sorted(m for m in ('torch', 'xarray', 'zarr', 'sklearn') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_show_of_a_missing_or_foreign_store(cli, tmp_path):
    code, stdout, stderr = cli("show", tmp_path / "absent.zarr")
    _one_line_error(code, stdout, stderr, "results store not found")
    (tmp_path / "plain").mkdir()
    code, stdout, stderr = cli("show", tmp_path / "plain")
    _one_line_error(code, stdout, stderr, "not a probekit results store")
