"""Stores at fsspec URLs (an in-memory stand-in for a remote object store, file://) and lazy dask-backed results.

The CLI refuses ``--out memory://`` (the results would vanish with its process), so these in-process runs write
to ``bucket://``: fsspec's memory filesystem under another name, standing in for s3 and the like."""

import dask.array
import fsspec
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from probekit import open_results
from probekit.store.location import upload


class BucketFileSystem(MemoryFileSystem):
    """fsspec's in-memory filesystem as a stand-in for a remote bucket (its own files)."""

    protocol = "bucket"
    store: dict = {}
    pseudo_dirs = [""]


@pytest.fixture()
def memory_url():
    fsspec.register_implementation("bucket", BucketFileSystem, clobber=True)
    yield "bucket://probekit-tests/run.zarr"
    BucketFileSystem.store.clear()
    BucketFileSystem.pseudo_dirs[:] = [""]


def test_a_memory_url_is_refused_as_out_because_it_would_vanish(cli):
    code, _, err = run_digits(cli, "memory://probekit-tests/gone.zarr")
    assert code == 2 and "would vanish" in err and len(err.strip().splitlines()) == 1


def run_digits(cli, out, *extra):
    return cli("run", "--model", "digits-branched8", "--data", "digits:test", "--limit", "40", "--batch-size", "16",
               "--plugins", "activity,covariance", "--out", out, "--quiet", *extra)


def test_memory_store_equals_the_local_one_and_opens_lazily(cli, tmp_path, memory_url):
    code, _, err = run_digits(cli, memory_url)
    assert code == 0, err
    code, _, err = run_digits(cli, tmp_path / "local.zarr")
    assert code == 0, err
    remote, local = open_results(memory_url), open_results(tmp_path / "local.zarr")
    np.testing.assert_array_equal(remote["activity"].norm.values, local["activity"].norm.values)
    np.testing.assert_array_equal(remote["covariance"].cov.values, local["covariance"].cov.values)
    lazy = open_results(memory_url, chunks={})["activity"].response_norm
    assert isinstance(lazy.data, dask.array.Array) and lazy.chunks[0][0] <= 40
    np.testing.assert_array_equal(lazy.values, local["activity"].response_norm.values)


def test_existing_url_needs_overwrite_and_overwrite_replaces_it(cli, memory_url):
    assert run_digits(cli, memory_url)[0] == 0
    code, _, err = run_digits(cli, memory_url)
    assert code == 2 and "already exists; pass --overwrite" in err and len(err.strip().splitlines()) == 1
    assert open_results(memory_url)["activity"].sizes["sample"] == 40  # the old store is intact
    code, _, err = cli("run", "--model", "digits-branched8", "--data", "digits:test", "--limit", "24",
                       "--plugins", "activity", "--out", memory_url, "--quiet", "--overwrite")
    assert code == 0, err
    tree = open_results(memory_url)
    assert tree["activity"].sizes["sample"] == 24 and "covariance" not in tree.children
    assert not fsspec.filesystem("bucket").exists("bucket://probekit-tests/run.zarr.new")


def test_file_url_is_a_local_path_and_reports_from_urls_go_to_the_working_folder(cli, tmp_path, memory_url,
                                                                                  monkeypatch):
    code, _, err = run_digits(cli, f"file://{tmp_path}/f.zarr")
    assert code == 0, err
    assert (tmp_path / "f.zarr" / "zarr.json").is_file()
    assert run_digits(cli, memory_url)[0] == 0
    monkeypatch.chdir(tmp_path)
    code, stdout, err = cli("report", memory_url)
    assert code == 0, err
    assert (tmp_path / "run-report" / "index.html").is_file()


class RecordingMemoryFileSystem(MemoryFileSystem):
    """An in-memory filesystem that records the order files arrive in."""

    protocol = "recordingmemory"
    arrivals: list[str] = []

    def put_file(self, lpath, rpath, **kwargs):
        self.arrivals.append(rpath)
        return super().put_file(lpath, rpath, **kwargs)


def test_upload_sends_the_root_metadata_last(cli, tmp_path):
    assert run_digits(cli, tmp_path / "s.zarr")[0] == 0
    fsspec.register_implementation("recordingmemory", RecordingMemoryFileSystem, clobber=True)
    upload(tmp_path / "s.zarr", "recordingmemory://up/s.zarr", replace=False)
    arrivals = RecordingMemoryFileSystem.arrivals
    assert arrivals[-1].endswith("up/s.zarr/zarr.json") and len(arrivals) > 10
    assert sum(a.endswith("s.zarr/zarr.json") for a in arrivals) == 1


def test_unknown_scheme_is_one_clear_line(cli):
    code, _, err = run_digits(cli, "nosuchscheme://bucket/x.zarr")
    assert code == 2 and "cannot open nosuchscheme://bucket/x.zarr" in err and len(err.strip().splitlines()) == 1
