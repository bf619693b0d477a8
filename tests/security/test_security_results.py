"""Results that stay right after concurrent runs, corruption, bad paths and bad values (docs/reliability.md,
"threat model"). Each test names the mutation of the protection that makes it fail (tried in a scratch copy)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image
from torch import nn

from helpers import assert_activity_set_aside
from plugin_scripts import plugin_script
from probekit import SummedBranches, open_results
from probekit.store.results import seal_root

PROBEKIT = [str(Path(sys.executable).with_name("probekit"))]  # the console script, as users run it


def probekit(*args, cwd=None, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([*PROBEKIT, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout)


def one_line(result_or_err) -> str:
    err = result_or_err if isinstance(result_or_err, str) else result_or_err.stderr
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("probekit: error: ") and "\x1b" not in err, err
    return lines[0]


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name) and p != path)


@pytest.fixture
def small_store(cli, tmp_path):
    out = tmp_path / "s.zarr"
    code, _, err = cli("run", "--model", "digits-branched8", "--data", "digits:test", "--limit", "200",
                       "--plugins", "activity,covariance", "--out", out, "--quiet")
    assert code == 0, err
    return out


def test_a_second_run_on_the_same_out_fails_at_once_and_the_first_completes(tmp_path):
    """Two runs on one ``--out`` used to share ``<out>.tmp`` and both exit 0, leaving a "complete" store without
    ``activity/response_norm``. Mutation: ``StoreLock`` acquiring nothing -> the second run exits 0 and this
    test fails."""
    out = tmp_path / "shared.zarr"
    first = subprocess.Popen([*PROBEKIT, "run", "--model", "digits-branched8", "--data", "random:1,8,8",
                              "--batch-size", "1", "--limit", "6000", "--plugins", "activity,covariance",
                              "--out", str(out), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.time() + 120
    while not (out / "zarr.json").exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
    assert first.poll() is None, "the first run ended before the second could start"
    second = probekit("run", "--model", "toy2", "--data", "toy2", "--plugins", "activity", "--out", out,
                      "--overwrite", "--quiet")
    assert first.poll() is None, "the first run ended while the second was starting: make it longer"
    assert second.returncode == 2 and "another probekit run" in one_line(second)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    tree = open_results(out)
    assert tree.attrs["probekit_status"] == "complete" and "digits-branched8" in tree.attrs["model"]
    assert tree["activity"].response_norm.shape == (6000, 8)
    assert siblings(out) == []  # no lock file or staging folder left


def test_overwrite_replaces_only_a_probekit_store(cli, tmp_path):
    """``--overwrite`` used to delete any folder named by ``--out`` (a thesis went with it), and an existing file
    failed with Errno 20 after the run, leaving ``.old``. Mutation: ``check_replaceable`` returning at once ->
    the folder is replaced and this test fails."""
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "thesis.txt").write_text("four years")
    code, _, err = cli("run", "--model", "toy2", "--data", "toy2", "--plugins", "activity", "--out", folder,
                       "--overwrite", "--quiet")
    assert code == 2 and "not a probekit results store" in one_line(err)
    assert (folder / "thesis.txt").read_text() == "four years" and siblings(folder) == []
    file = tmp_path / "notes.zarr"
    file.write_text("not a store")
    code, _, err = cli("run", "--model", "toy2", "--data", "toy2", "--plugins", "activity", "--out", file,
                       "--overwrite", "--quiet")
    assert code == 2 and "is a file" in one_line(err) and file.read_text() == "not a store"
    assert siblings(file) == []


def test_report_never_deletes_outside_its_own_folder(cli, small_store, tmp_path):
    """``probekit report S --out .. --overwrite`` deleted the parent folder, the store and a sibling file.
    Mutation: ``check_report_target`` without its checks -> the parent is replaced and this test fails."""
    sibling = tmp_path / "sibling.txt"
    sibling.write_text("keep me")
    for out in (tmp_path, tmp_path / "..", small_store, small_store / "activity"):
        code, _, err = cli("report", small_store, "--out", out, "--overwrite")
        assert code == 2 and one_line(err), out
    plain = tmp_path / "plain"
    plain.mkdir()
    code, _, err = cli("report", small_store, "--out", plain, "--overwrite")
    assert code == 2 and "not a probekit report folder" in one_line(err)
    assert sibling.read_text() == "keep me" and open_results(small_store)["covariance"].cov.shape == (8, 8)


STATELESS_RUN = plugin_script("""
class Counter(Analysis):
    name = "counter"  # keeps merge_rules = None, the base-class default: its state cannot be checkpointed

    def __init__(self, context, options):
        super().__init__(context, options)
        self.seen = 0

    def update(self, batch):
        if os.environ.get("CRASH_AT") and int(batch.index[0]) >= int(os.environ["CRASH_AT"]):
            os.kill(os.getpid(), signal.SIGKILL)
        self.seen += len(batch.index)

    def finalize(self):
        return xr.Dataset({"seen": ((), self.seen)})
""", "Counter")


def test_resume_refuses_an_analysis_that_cannot_checkpoint(tmp_path):
    """A plugin with ``merge_rules = None`` lost what it saw before the checkpoint (200 of 360 counted) and the
    store was marked complete. Mutation: ``_check_mergeable`` ignoring ``resume`` -> the resumed run exits 0
    with ``seen`` < 360 and this test fails."""
    out = tmp_path / "r.zarr"
    args = ["run", "--model", "digits-branched8", "--data", "digits:test", "--limit", "360", "--batch-size",
            "8", "--checkpoint-every", "5", "--plugins", "counter,activity", "--out", str(out), "--quiet"]
    killed = subprocess.run([sys.executable, "-c", STATELESS_RUN, *args], capture_output=True, text=True,
                            env={**os.environ, "CRASH_AT": "200"}, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    env = {k: v for k, v in os.environ.items() if k != "CRASH_AT"}
    resumed = subprocess.run([sys.executable, "-c", STATELESS_RUN, *args, "--resume"], capture_output=True,
                             text=True, env=env, timeout=300)
    assert resumed.returncode == 2 and "'counter' does not declare how its state merges" in one_line(resumed)
    with pytest.warns(UserWarning, match="incomplete"):
        assert open_results(out).attrs["probekit_status"] == "incomplete"  # not marked complete


def flip_one_bit(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["one bit", "same-size garbage"])
def test_same_size_corruption_is_named_and_the_other_nodes_stay_readable(cli, small_store, damage, tmp_path):
    """The manifest held sizes only and zstd's checksum was off: a flipped bit gave other numbers silently, and
    garbage of the same size a raw zstd traceback. Mutation: ``damage`` comparing sizes only -> the node is
    not named and this test fails."""
    expected = open_results(small_store)["covariance"].cov.values
    chunk = small_store / "activity" / "norm" / "c" / "0"
    if damage == "one bit":
        flip_one_bit(chunk, 5)
    else:
        chunk.write_bytes(os.urandom(chunk.stat().st_size))
    assert_activity_set_aside(cli, small_store, expected, ": .*fail their checksum")
    code, _, err = cli("report", small_store, "--out", tmp_path / "rep")
    page = (tmp_path / "rep" / "index.html").read_text()
    assert code == 0 and "damaged, left out" in page and "covariance" in page, err


def test_chunks_carry_crc32c_so_a_read_that_skips_the_manifest_fails_loudly(small_store):
    """Every array of a store (streamed per-sample arrays included) has zarr's crc32c codec. Mutation:
    ``checksummed_compressors`` returning zstd alone -> the bit flip decodes into wrong numbers."""
    group = zarr.open_group(str(small_store), mode="r")
    for path in ("activity/norm", "activity/response_norm", "covariance/cov"):
        assert "crc32c" in repr(group[path].metadata.codecs).lower(), path
    flip_one_bit(small_store / "covariance" / "cov" / "c" / "0" / "0", 3)
    with pytest.raises(Exception, match="(?i)checksum"):
        zarr.open_group(str(small_store), mode="r")["covariance/cov"][...]


class SqrtBranch(nn.Module):
    """``sqrt`` of ten pixels minus 0.3: NaN for the samples where one of them is darker than 0.3."""

    def forward(self, x):
        return (x.flatten(1)[:, :10] - 0.3).sqrt()


def test_nan_branch_makes_the_flags_unknown_not_silent(cli, tmp_path):
    """With one healthy and one NaN branch, ``active`` said 0 of 2 (the healthy branch silent) and the NaN branch
    was "most specialized". Mutation: ``relative_norms`` without its finiteness mask -> the healthy branch is
    called silent again and this test fails."""
    path = tmp_path / "nan.pt"
    torch.save(SummedBranches([nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), SqrtBranch()]), path)
    out = tmp_path / "nan.zarr"
    code, stdout, err = cli("run", "--model", path, "--data", "digits:test", "--limit", "100", "--plugins",
                            "activity,specialization", "--out", out, "--quiet", "--trust-pickle")
    assert code == 0, err
    activity = open_results(out)["activity"]
    assert np.isnan(activity.active.values).all() and np.isnan(activity.relative_norm.values).all()
    assert np.isnan(activity.active_count.values).all() and np.isnan(activity.silent_count.values).all()
    assert "unknown/2 (NaN/Inf responses)" in stdout
    assert "most specialized branch: unknown (NaN/Inf scores" in stdout


@pytest.mark.parametrize("option", ["gradient-factors.distributive_tol=nan", "gradient-factors.collaborative_tol=inf",
                                    "chan-vese.sigma=nan", "chan-vese.mu=-inf", "chan-vese.consistency=nan",
                                    "activity.threshold=nan"])
def test_non_finite_option_values_are_refused(cli, tmp_path, option):
    """Mutation: ``_convert`` without its ``math.isfinite`` check -> NaN passes every ``check()`` (NaN compares
    false) and this test fails."""
    plugin = option.split(".")[0]
    code, _, err = cli("run", "--model", "toy2", "--data", "toy2", "--plugins", plugin, "--option", option,
                       "--out", tmp_path / "o.zarr", "--quiet")
    assert code == 2 and "finite" in one_line(err)
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.parametrize("value", ["1e20", "100000000000000000000", "0", "-3", "eight"])
def test_bad_batch_sizes_are_one_line(tmp_path, value):
    result = probekit("run", "--model", "toy2", "--data", "toy2", "--plugins", "activity", "--batch-size", value,
                      "--out", tmp_path / "b.zarr", "--quiet")
    assert result.returncode == 2 and "--batch-size" in one_line(result)


def make_images(folder: Path, sizes: list[tuple[int, int]]) -> None:
    for i, size in enumerate(sizes):
        (folder / "cls").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((size[1], size[0], 3), 7 * i % 256, np.uint8)).save(folder / "cls" / f"{i:02d}.png")


def test_bad_images_are_one_line_naming_the_file(tmp_path):
    mixed = tmp_path / "mixed"
    make_images(mixed, [(16, 16), (16, 16), (20, 16)])
    result = probekit("run", "--model", "torchvision:resnet18", "--data", f"imagefolder:{mixed}", "--plugins",
                      "activity", "--out", tmp_path / "m.zarr", "--quiet", "--branches", "layer1.*")
    assert result.returncode == 2 and "cls/02.png is 20x16" in one_line(result)
    empty = tmp_path / "empty"
    make_images(empty, [(16, 16)])
    (empty / "cls" / "zero.png").write_bytes(b"")
    result = probekit("run", "--model", "torchvision:resnet18", "--data", f"imagefolder:{empty}", "--plugins",
                      "activity", "--out", tmp_path / "e.zarr", "--quiet", "--branches", "layer1.*")
    assert result.returncode == 2 and "cls/zero.png cannot be read" in one_line(result)


def truncated_png(path: Path, size: int = 16) -> None:
    """A PNG whose header reads fine but whose pixel data stops short: it fails only when decoded."""
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_failing_overwrite_keeps_the_old_store_and_leaves_no_staging(cli, tmp_path):
    """The failing run dies mid-stream, after its replacement store and staging folder exist (a truncated image
    near the end). Mutation: ``StoreWriter`` building the replacement in place (``self.target = self.path``)
    -> the old store is gone and this test fails."""
    folder = tmp_path / "images"
    make_images(folder, [(16, 16)] * 40)
    out = tmp_path / "r.zarr"
    spec = ["--model", "torchvision:resnet18", "--data", f"imagefolder:{folder}", "--plugins", "activity",
            "--batch-size", "4", "--branches", "layer1.*", "--out", out, "--quiet"]
    code, _, err = cli("run", *spec)
    assert code == 0, err
    created = open_results(out).attrs["created_at"]
    truncated_png(folder / "cls" / "39.png")
    code, _, err = cli("run", *spec, "--overwrite")
    assert code == 2 and "sample 39 cannot be read" in one_line(err)
    assert open_results(out).attrs["created_at"] == created and open_results(out)["activity"].sizes["sample"] == 40
    assert siblings(out) == []


def test_show_escapes_what_a_store_says(cli, small_store):
    """A store is a file from someone else too. Mutation: ``describe`` without ``escape`` -> ESC reaches the
    terminal and this test fails."""
    group = zarr.open_group(str(small_store), mode="r+")
    group.attrs["dataset"] = "\x1b[2J\x1b[1;1Hall good"
    seal_root(small_store)  # whoever wrote the store can write its checksum too
    code, stdout, _ = cli("show", small_store)
    assert code == 0 and "\x1b" not in stdout and "\\x1b[2J" in stdout


LISTENERS = plugin_script(r"""
def listening_sockets(pid):
    '''(local address, port) of the listening TCP sockets a process holds, from /proc.'''
    inodes = set()
    for fd in os.listdir(f'/proc/{pid}/fd'):
        try:
            target = os.readlink(f'/proc/{pid}/fd/{fd}')
        except OSError:
            continue
        if target.startswith('socket:['):
            inodes.add(target[8:-1])
    found = []
    for table in ('/proc/net/tcp', '/proc/net/tcp6'):
        for line in open(table).read().splitlines()[1:]:
            parts = line.split()
            if parts[3] == '0A' and parts[9] in inodes:
                found.append(parts[1])
    return found


class Sockets(Analysis):
    name = "sockets"
    merge_rules = {}

    def __init__(self, context, options):
        super().__init__(context, options)
        self.logged = False

    def update(self, batch):
        if not self.logged:  # mid-run: the process group is up
            self.logged = True
            with open(os.environ['SOCKETS_LOG'], 'a') as log:
                mine = listening_sockets(os.getpid()) + listening_sockets(os.getppid())  # the rank and its launcher
                log.write(os.environ.get('RANK') + ' ' + json.dumps(mine) + chr(10))

    def finalize(self):
        return xr.Dataset()
""", "Sockets", run_cli=False)


NPROC_RUN = ["run", "--nproc", "2", "--model", "digits-branched8", "--data", "digits:test", "--limit", "256",
             "--batch-size", "32", "--quiet"]


def test_nproc_keeps_the_working_folder_off_sys_path(tmp_path):
    """A ``tqdm.py`` in the working folder ran in the launcher and in every rank. Mutation: launching the ranks
    with ``python -m probekit`` (the working folder first on ``sys.path``) -> the marker appears and this test
    fails."""
    marker = tmp_path / "tqdm-ran"
    (tmp_path / "tqdm.py").write_text(f"open({str(marker)!r}, 'a').write('x')\nraise ImportError('planted')\n")
    result = probekit(*NPROC_RUN, "--plugins", "activity", "--out", tmp_path / "d.zarr", cwd=tmp_path,
                      env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert not marker.exists()


def is_loopback(hex_address: str) -> bool:
    """Whether an address as /proc/net/tcp{,6} writes it (``0100007F:1F90``) is 127.0.0.1 or ::1 (v4 or v6)."""
    host = hex_address.split(":")[0]
    return host.endswith("0100007F") or host in ("0" * 31 + "1", "0" * 24 + "01000000")


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads listening sockets from Linux's /proc")
def test_nproc_listens_only_on_loopback(tmp_path):
    """torchrun's store listened on all interfaces. Each rank lists the listening TCP sockets of itself and of
    the process that launched it, mid-run. Mutation: the old torchrun launcher (``distributed.py`` of 93fcbba)
    -> its rendezvous store listens on all interfaces and this test fails. (Dropping ``GLOO_SOCKET_IFNAME``
    fails it only where the host name resolves to a non-loopback address; here it resolves to 127.0.0.1.)"""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(LISTENERS)  # registers the socket-listing analysis in every rank
    log = tmp_path / "sockets.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
           "SOCKETS_LOG": str(log), "OMP_NUM_THREADS": "1"}
    result = probekit(*NPROC_RUN, "--plugins", "activity,sockets", "--out", tmp_path / "d.zarr", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = log.read_text().splitlines()
    assert sorted(line.split()[0] for line in lines) == ["0", "1"]
    for line in lines:
        addresses = json.loads(line.split(" ", 1)[1])
        assert addresses and all(is_loopback(a) for a in addresses), line
