"""Stores and files someone else prepared (issue 29, docs/reliability.md "threat model"): a store is checked before
anything in it is decoded, and files probekit creates never follow a planted link. Each test names the mutation of
the protection that makes it fail (``tests/security/mutate.py``)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from probekit import ProbekitError, open_results
from probekit.run.atomic import save_atomically
from probekit.store.results import seal_root

RUN = ("run", "--model", "digits-branched8", "--data", "digits:test", "--limit", "32", "--batch-size", "8",
       "--quiet")


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("probekit: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from probekit.cli import main

    out = tmp_path_factory.mktemp("stores") / "s.zarr"
    assert main([*RUN, "--plugins", "activity,covariance", "--out", str(out)]) == 0
    return out


@pytest.fixture
def copy(store, tmp_path):
    target = tmp_path / "c.zarr"
    shutil.copytree(store, target)
    return target


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {Path.cwd() / 'PAYLOAD-RAN'}",))


def test_a_zarr2_pickle_codec_store_is_refused_and_runs_nothing(cli, tmp_path, monkeypatch):
    """With zarr 3.0.8 + numcodecs 0.15.1 ``show`` ran the payload. Mutation: no check of zarr 2 metadata and
    codecs (``check_metadata`` skipping every file) -> the check does not refuse it and this test fails."""
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.zarr"
    (evil / "x").mkdir(parents=True)
    (evil / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    (evil / "x" / ".zarray").write_text(json.dumps({"zarr_format": 2, "shape": [1], "chunks": [1], "dtype": "|O",
                                                    "compressor": {"id": "pickle"}, "fill_value": None,
                                                    "filters": None, "order": "C"}))
    (evil / "x" / "0").write_bytes(pickle.dumps(np.array([Payload()], dtype=object)))
    code, _, err = cli("show", evil)
    assert code == 2 and "zarr format 2" in one_line(err)
    assert not (tmp_path / "PAYLOAD-RAN").exists()


def test_a_codec_outside_the_allowlist_is_refused_before_decoding(cli, copy):
    """Mutation: ``ALLOWED_CODECS`` check skipped -> zarr is asked to decode and this test fails."""
    meta = copy / "activity" / "norm" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["codecs"].append({"name": "numcodecs.pickle", "configuration": {}})
    meta.write_text(json.dumps(doc))
    code, _, err = cli("show", copy)
    assert code == 2 and "numcodecs.pickle" in one_line(err)


def test_a_flipped_root_value_fails_the_root_checksum(cli, copy):
    """One flipped digit turned ``8/8`` active into ``9/8`` with no warning. Mutation: ``check_root_checksum``
    returning at once -> ``show`` prints the changed number and this test fails."""
    root = copy / "zarr.json"
    text = root.read_text()
    assert '"n_branches": 8' in text
    root.write_text(text.replace('"n_branches": 8', '"n_branches": 9'))
    code, out, err = cli("show", copy)
    assert code == 2 and "fails its checksum" in one_line(err) and "9" not in out


@pytest.mark.parametrize("key", ["../outside-secret", "/", "a/../../b", "./x"])
def test_manifest_keys_must_be_plain_paths_inside_the_node(cli, copy, tmp_path, key):
    """``"../outside-secret"`` gave an existence/size/CRC oracle outside the store, ``"/"`` walked the disk.
    Mutation: ``check_manifest_keys`` returning at once -> a key outside the node is read and this test fails."""
    (tmp_path / "outside-secret").write_text("secret")
    root = copy / "zarr.json"
    doc = json.loads(root.read_text())
    manifests = json.loads(doc["attributes"]["manifests"])
    manifests["activity"][key] = [6, 0]
    doc["attributes"]["manifests"] = json.dumps(manifests)
    root.write_text(json.dumps(doc))
    seal_root(copy)  # whoever prepared the store can recompute the checksum
    code, _, err = cli("show", copy)
    assert code == 2 and "not a plain path" in one_line(err)


def test_a_manifest_node_name_that_is_a_path_is_refused(cli, copy):
    root = copy / "zarr.json"
    doc = json.loads(root.read_text())
    doc["attributes"]["manifests"] = json.dumps({"../..": {"zarr.json": [1, 2]}})
    root.write_text(json.dumps(doc))
    seal_root(copy)
    code, _, err = cli("show", copy)
    assert code == 2 and "invalid node" in one_line(err)


@pytest.mark.parametrize("plant", ["symlink-to-dev-zero", "fifo", "symlinked-node"])
def test_links_and_special_files_in_a_store_are_refused_unread(cli, copy, plant):
    """A coordinate chunk linked to ``/dev/zero`` read until memory ran out; a FIFO hung ``show``. Mutation:
    ``local_files`` accepting every entry -> the read hangs or fills memory (the per-test timeout fails it)."""
    chunk = copy / "activity" / "branch" / "c" / "0"
    if plant == "symlinked-node":
        shutil.move(copy / "covariance", copy.parent / "elsewhere")
        (copy / "covariance").symlink_to(copy.parent / "elsewhere")
    else:
        chunk.unlink()
        chunk.symlink_to("/dev/zero") if plant == "symlink-to-dev-zero" else os.mkfifo(chunk)
    code, _, err = cli("show", copy)
    assert code == 2 and ("symbolic link" in err or "not a regular file" in err) and one_line(err)


def test_a_planted_lock_symlink_is_refused_and_its_target_untouched(cli, tmp_path):
    """A lock planted as a symlink to ``notes.txt`` had it truncated and the run's PID written into it.
    Mutation: the lock opened with ``O_CREAT`` and no ``O_EXCL | O_NOFOLLOW`` -> notes.txt changes."""
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    (tmp_path / "r.zarr.lock").symlink_to(notes)
    code, _, err = cli(*RUN, "--plugins", "covariance", "--out", tmp_path / "r.zarr")
    assert code == 2 and "not a probekit lock file" in one_line(err)
    assert notes.read_text() == "my notes\n" and not (tmp_path / "r.zarr").exists()


def test_a_planted_lock_file_is_refused_and_a_dead_runs_lock_is_taken_over(cli, tmp_path):
    lock = tmp_path / "r.zarr.lock"
    lock.write_text("not a pid: someone's file\n")
    code, _, err = cli(*RUN, "--plugins", "covariance", "--out", tmp_path / "r.zarr")
    assert code == 2 and "not a probekit lock file" in one_line(err)
    assert lock.read_text() == "not a pid: someone's file\n"
    lock.write_text("4242")  # what a killed run leaves
    code, _, err = cli(*RUN, "--plugins", "covariance", "--out", tmp_path / "r.zarr")
    assert code == 0, err
    assert not lock.exists()


def test_atomic_saves_never_write_through_a_planted_name(tmp_path):
    """``save_atomically`` wrote a predictable ``<path>.tmp``: a symlink planted there was written through.
    Mutation: ``temporary_beside`` naming ``<path>.tmp`` and opening it with plain ``open`` -> notes.txt
    changes."""
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    target = tmp_path / "last.pt"
    (tmp_path / "last.pt.tmp").symlink_to(notes)
    save_atomically({"x": torch.ones(2)}, target)
    assert notes.read_text() == "my notes\n"
    assert torch.equal(torch.load(target, weights_only=True)["x"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.pt.tmp", "notes.txt"]


def test_out_through_a_symlink_is_refused_and_leaves_nothing(cli, store, tmp_path):
    """``--out`` through a symlink was swapped for the link, then ``rmtree`` failed and a dangling ``.old-*``
    stayed. Mutation: ``real_store_path`` accepting a link -> the run goes ahead and this test fails."""
    real = tmp_path / "real.zarr"
    shutil.copytree(store, real)
    link = tmp_path / "link.zarr"
    link.symlink_to(real)
    code, _, err = cli(*RUN, "--plugins", "covariance", "--out", link, "--overwrite")
    assert code == 2 and "symbolic link" in one_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.zarr", "real.zarr"] and link.is_symlink()
    assert open_results(real).attrs["probekit_status"] == "complete"


def test_one_lock_per_real_path(tmp_path):
    """Runs through a symlinked parent folder and through the real folder take the same lock."""
    from probekit.store.lock import StoreLock
    from probekit.store.results import StoreWriter

    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    first = StoreWriter(tmp_path / "alias" / "r.zarr")
    held = StoreLock(first.path)
    try:
        with pytest.raises(ProbekitError, match="another probekit run"):
            StoreLock(StoreWriter(tmp_path / "real" / "r.zarr").path)
    finally:
        held.release()
