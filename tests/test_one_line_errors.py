"""Bad or hostile input that used to end in a traceback (issue 29, item 8): each is one escaped line, a non-zero
exit, nothing run from the file and nothing already written lost."""

from __future__ import annotations

import errno
import functools
import json
import os
import pickle
import sys

import numpy as np
import pytest
import torch
import torchvision
import zarr
from PIL import Image
from torch import nn

from probekit import open_results


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("probekit: error: ") and "Traceback" not in err, err
    return lines[0]


def test_a_zoo_checkpoint_with_an_unknown_config_key(cli, tmp_path):
    from probekit.zoo.registry import ZOO

    saved = torch.load(ZOO["toy1"].weights_path("toy1"), weights_only=True)
    saved["config"]["bogus"] = 1
    torch.save(saved, tmp_path / "toy.pt")
    code, _, err = cli("run", "--model", tmp_path / "toy.pt", "--plugins", "activity", "--out", tmp_path / "a.zarr")
    assert code == 2 and "does not fit its architecture" in one_line(err) and "bogus" in err


class Payload:
    def __reduce__(self):
        return (os.system, ("touch PAYLOAD-RAN",))


def test_a_hostile_run_checkpoint_on_resume(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["run", "--model", "digits-branched8", "--data", "digits:test", "--limit", "32", "--batch-size", "8",
            "--plugins", "covariance", "--out", "r.zarr", "--quiet", "--checkpoint-every", "1"]
    from probekit.run import checkpoint as run_checkpoint

    def dies(*a, **k):
        raise KeyboardInterrupt

    real = run_checkpoint.save
    monkeypatch.setattr(run_checkpoint, "save", lambda *a, **k: (real(*a, **k), dies()))
    assert cli(*args)[0] == 130
    monkeypatch.setattr(run_checkpoint, "save", real)
    (staging,) = tmp_path.glob("r.zarr.tmp-*")
    (staging / "checkpoint.pt").write_bytes(pickle.dumps({"settings": Payload()}))
    code, _, err = cli(*args, "--resume")
    assert code == 2 and "cannot be read safely" in one_line(err)
    torch.save({"settings": "x", "position": "not a number"}, staging / "checkpoint.pt")
    code, _, err = cli(*args, "--resume")
    assert code == 2 and "not a probekit run checkpoint" in one_line(err)
    assert not (tmp_path / "PAYLOAD-RAN").exists()


def test_a_decompression_bomb_image_names_the_file(cli, tmp_path):
    folder = tmp_path / "images" / "a"
    folder.mkdir(parents=True)
    Image.new("1", (15000, 14000)).save(folder / "huge.png")  # 210 megapixels, a few kB on disk
    code, _, err = cli("run", "--model", "toy1", "--data", f"imagefolder:{tmp_path / 'images'}", "--plugins",
                       "activity", "--out", tmp_path / "b.zarr")
    assert code == 2 and "a/huge.png" in one_line(err) and "DecompressionBomb" in err


def save_module(path, module):
    torch.save(module, path)
    return path


def test_a_pickled_forward_hook_is_refused_in_run_and_evaluate(cli, tmp_path):
    model = nn.Linear(64, 10)
    model.register_forward_hook(torch.nn.functional.relu)
    path = save_module(tmp_path / "hook.pt", model)
    for command in (["run", "--plugins", "activity", "--out", tmp_path / "h.zarr"], ["evaluate"]):
        code, _, err = cli(command[0], "--model", path, "--data", "digits:test", "--limit", "8", *command[1:])
        assert code == 2 and "carries hooks" in one_line(err)


def test_modules_that_contain_themselves_or_nest_too_deep(cli, tmp_path):
    looped = nn.Sequential(nn.Linear(4, 4))
    looped.add_module("again", looped)
    deep = top = nn.Sequential()
    for _ in range(5000):
        deeper = nn.Sequential()
        deep.add_module("n", deeper)
        deep = deeper
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(50_000)  # only for writing the file
    try:
        files = {"contains itself": save_module(tmp_path / "loop.pt", looped),
                 "nested over": save_module(tmp_path / "deep.pt", top)}
    finally:
        sys.setrecursionlimit(limit)
    for message, path in files.items():
        code, _, err = cli("run", "--model", path, "--data", "random:4", "--plugins", "activity", "--out",
                           tmp_path / "x.zarr")
        assert code == 2 and message in one_line(err)


@pytest.mark.parametrize("payload", [np.save, torchvision.io.write_file,
                                     functools.partial(torchvision.models.resnet18, weights=None)],
                         ids=["numpy.save", "torchvision.io.write_file", "partial(resnet18)"])
def test_trust_pickle_is_offered_only_for_plausible_model_classes(cli, tmp_path, payload):
    path = tmp_path / "thing.pt"
    torch.save(payload, path)
    code, _, err = cli("run", "--model", path, "--plugins", "activity", "--out", tmp_path / "x.zarr")
    assert code == 2 and "refused" in one_line(err) and "--trust-pickle" not in err


@pytest.mark.parametrize(("out", "message"), [("memory://r.zarr", "would vanish"),
                                              ("file://otherhost/tmp/r.zarr", "names the host")])
def test_outputs_that_would_vanish_or_go_elsewhere(cli, out, message):
    code, _, err = cli("run", "--model", "toy1", "--plugins", "activity", "--out", out)
    assert code == 2 and message in one_line(err)


def test_a_full_disk_while_consolidating_never_leaves_a_complete_store(cli, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zarr, "consolidate_metadata", full)
    out = tmp_path / "r.zarr"
    code, _, err = cli("run", "--model", "toy1", "--plugins", "activity", "--out", out, "--quiet")
    assert code == 1 and "No space left" in one_line(err)
    if out.exists():
        assert json.loads((out / "zarr.json").read_text())["attributes"]["probekit_status"] != "complete"
        with pytest.warns(UserWarning, match="incomplete"):
            open_results(out)
