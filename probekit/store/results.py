"""Results stores: an ``xarray.DataTree`` in zarr, one node per analysis.

Write protocol (so a crash never leaves half a node, and never loses an
older store):

* the run takes an exclusive lock on the store (:mod:`probekit.store.lock`):
  a second run on the same path fails at once;
* a new store is created with root attr ``status='incomplete'``;
* each node is assembled in ``<store>.tmp-<run id>/<node>`` (per-sample
  arrays stream there during the pass; the folder is named in the root attr
  ``probekit_staging``, for ``--resume``) and then moved into the store with
  one ``os.replace``;
* at the end metadata are consolidated, and only then the root becomes
  ``status='complete'`` (or ``'failed'`` with the errors) and gets its
  checksum, in one atomic replacement of its ``zarr.json`` (a full disk
  before that leaves it ``incomplete``);
* with ``overwrite`` the new store is built at ``<store>.new-<run id>`` and
  swapped in only when complete, so a crash keeps the old store. Only a
  probekit store is ever replaced: any other file or folder is refused;
* every array carries zarr's crc32c checksum codec, and the root records a
  manifest (size and CRC-32 of every file) per node
  (:mod:`probekit.store.manifest`).

A store at an fsspec URL is built locally by the same protocol, in a
temporary folder, and uploaded when complete (:mod:`probekit.store.location`).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import xarray as xr
import zarr

from probekit.errors import ProbekitError, escape
from probekit.store.combine import combine_results
from probekit.store.files import real_store_path, temporary_beside
from probekit.store.names import check_node_name
from probekit.store.lock import StoreLock
from probekit.store.location import exists, filesystem, is_url, local_path, name_of, remote_root_metadata, upload
from probekit.store.manifest import damage, manifest
from probekit.store.untrusted import (CHECKSUM_ATTR, check_manifest_keys, check_metadata, check_root_checksum,
                                     local_files, read_local, root_checksum)

STATUS_ATTR = "probekit_status"
STAGING_ATTR = "probekit_staging"
MANIFESTS_ATTR = "manifests"
DAMAGED_ATTR = "damaged_nodes"


def checksummed_compressors() -> tuple:
    """zarr's default compressor followed by a crc32c checksum: a changed chunk fails to decode, loudly."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return (ZstdCodec(), Crc32cCodec())


def is_probekit_store(root_metadata: bytes | None) -> bool:
    """Whether a store root's ``zarr.json`` bytes are those of a probekit results store."""
    try:
        return STATUS_ATTR in json.loads(root_metadata or b"{}").get("attributes", {})
    except (ValueError, AttributeError):
        return False


def _root_metadata(path: Path) -> bytes | None:
    try:
        return (path / "zarr.json").read_bytes()
    except OSError:
        return None


def check_replaceable(path: Path) -> None:
    """Refuse to replace anything at ``path`` but a probekit results store."""
    if path.is_dir() and is_probekit_store(_root_metadata(path)):
        return
    kind = "folder" if path.is_dir() else "file"
    raise ProbekitError(f"{path} is a {kind} that is not a probekit results store; --overwrite replaces only a "
                        "probekit store, so move it away or choose another --out")


def _plain_strings(ds: xr.Dataset) -> xr.Dataset:
    """Fixed-width unicode arrays as object arrays (zarr 3 stores those as portable vlen strings)."""
    converted = {
        name: var.astype(object) for name, var in ds.variables.items() if var.dtype.kind == "U"
    }
    return ds.assign_coords({k: v for k, v in converted.items() if k in ds.coords}).assign(
        {k: v for k, v in converted.items() if k not in ds.coords}
    )


def already_exists(path: Path) -> str:
    """The error for a store that is in the way: an interrupted run's points at ``--resume``."""
    try:
        interrupted = store_status(path) == "incomplete"
    except ProbekitError:  # not a store: nothing to resume
        interrupted = False
    if interrupted:
        return (f"output store {path} holds an interrupted run: add --resume to continue it from its last "
                "checkpoint, or --overwrite to start again")
    return f"output store {path} already exists; pass --overwrite to replace it"


class StoreWriter:
    """Writes one run's store following the protocol in the module docstring."""

    def __init__(self, path: str | Path, overwrite: bool = False, resume: bool = False):
        self.path = real_store_path(local_path(path))
        if self.path.exists() and not (overwrite or resume):
            raise ProbekitError(already_exists(self.path))
        self.replacing = self.path.exists() and not resume
        if self.replacing:
            check_replaceable(self.path)
        self.manifests: dict[str, dict] = {}
        self.run_id = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.target = self._sibling("new") if self.replacing else self.path
        self.tmp = self._sibling("tmp")
        self.lock: StoreLock | None = None
        self.created = False  # whether this run made self.target (so discard may remove it)

    def _sibling(self, kind: str) -> Path:
        return self.path.with_name(f"{self.path.name}.{kind}-{self.run_id}")

    def _stale_siblings(self) -> list[Path]:
        """Staging folders that runs on this store left behind (killed or out of disk), never ours."""
        pattern = re.compile(re.escape(self.path.name) + r"\.(new|tmp)-\d+-[0-9a-f]{8}")
        ours = {self.target, self.tmp}
        return [p for p in self.path.parent.glob(self.path.name + ".*")
                if pattern.fullmatch(p.name) and p not in ours and p.is_dir()]

    def create(self, attrs: dict[str, Any]) -> None:
        """Take the store's lock and make the empty store, marked incomplete."""
        self.lock = StoreLock(self.path)
        if self.replacing:
            check_replaceable(self.path)  # again, now that no other run can change it
        elif self.path.exists():
            self.release()
            raise ProbekitError(already_exists(self.path))
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.created = True  # under the lock, nothing is at the target: what appears there from now on is ours
        try:
            group = zarr.open_group(str(self.target), mode="w-", zarr_format=3)
        except Exception as exc:
            self.release()
            raise ProbekitError(f"cannot create output store {self.path}: {exc}") from exc
        group.attrs.update({**attrs, STATUS_ATTR: "incomplete", STAGING_ATTR: self.tmp.name})

    def reopen(self) -> None:
        """Continue writing an interrupted run's store (``--resume``) instead of creating one."""
        self.lock = StoreLock(self.path)
        if not self.path.exists():
            self.release()
            raise ProbekitError(f"{self.path} does not exist: there is no interrupted run to resume")
        status = store_status(self.path)
        if status != "incomplete":
            self.release()
            raise ProbekitError(f"{self.path} is {status}: only an interrupted (incomplete) run can be resumed")
        staging = str(zarr.open_group(str(self.path), mode="r").attrs.get(STAGING_ATTR, self.path.name + ".tmp"))
        self.tmp = self.path.with_name(check_staging_name(staging, self.path.name))

    def staging(self, name: str) -> Path:
        """The folder where node ``name`` is assembled (per-sample arrays stream into it)."""
        return self.tmp / check_node_name(name)

    def write_node(self, name: str, ds: xr.Dataset) -> None:
        """Write one analysis node atomically, next to any per-sample arrays already streamed."""
        staging = self.staging(name)  # checks the name
        mode = "a" if staging.exists() else "w-"
        self.tmp.mkdir(exist_ok=True)
        ds = _plain_strings(ds)
        encoding = {k: {"compressors": checksummed_compressors()} for k in ds.variables}
        ds.to_zarr(str(staging), mode=mode, consolidated=False, zarr_format=3, encoding=encoding)
        final = self.target / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        self.manifests[name] = manifest(final)

    def discard(self) -> None:
        """Remove this run's unfinished store and staging (never an older store being replaced), unlock."""
        settle_zarr_writes()
        for path in (self.target if self.created else None, self.tmp):
            if path is not None and path.exists():
                shutil.rmtree(path)
        self.release()

    def drop_staging(self) -> None:
        """After a failure writing (a full disk): free this run's staging and unfinished replacement, keep what
        sits at the store's own path, unlock."""
        for path in (self.tmp, self.target if self.replacing else None):
            if path is not None and path.exists():
                shutil.rmtree(path, ignore_errors=True)
        self.release()

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def finish(self, errors: dict[str, str], attrs: dict | None = None) -> None:
        """Add ``attrs`` to the root, consolidate, then mark the store complete (or failed) with its root checksum,
        swap it in, unlock."""
        group = zarr.open_group(str(self.target), mode="r+")
        group.attrs.update({**(attrs or {}), "errors": json.dumps(errors), MANIFESTS_ATTR: json.dumps(self.manifests)})
        with warnings.catch_warnings():  # zarr 3 warns that consolidation is not in its v3 spec yet
            warnings.simplefilter("ignore", UserWarning)
            zarr.consolidate_metadata(str(self.target))
        seal_root(self.target, "failed" if errors else "complete")  # until here (a full disk) it says incomplete
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        if self.replacing:
            old = self._sibling("old")
            os.replace(self.path, old)
            os.replace(self.target, self.path)
            shutil.rmtree(old)
        for stale in self._stale_siblings():
            shutil.rmtree(stale, ignore_errors=True)
        self.release()


def seal_root(store: Path, status: str | None = None) -> None:
    """Set the root's final ``status`` (if given; the staging attr goes) and record the root ``zarr.json``'s
    checksum in it (:func:`probekit.store.untrusted.root_checksum`), in one atomic replacement."""
    path = store / "zarr.json"
    document = json.loads(path.read_bytes())
    root_attrs = document.setdefault("attributes", {})
    if status is not None:
        root_attrs[STATUS_ATTR] = status
        root_attrs.pop(STAGING_ATTR, None)
    root_attrs[CHECKSUM_ATTR] = root_checksum(document)
    with temporary_beside(path) as (f, tmp):
        f.write(json.dumps(document, indent=2).encode())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def check_staging_name(name: str, store_name: str) -> str:
    """A staging folder name read from a store's attrs, checked to be a sibling of the store's own kind."""
    if not re.fullmatch(re.escape(store_name) + r"\.tmp(-\d+-[0-9a-f]{8})?", name):
        raise ProbekitError(f"the store names an invalid staging folder {name!r}; start the run again")
    return name


class RemoteStoreWriter(StoreWriter):
    """A :class:`StoreWriter` for an fsspec URL: builds the store in a local temporary folder, uploads it at
    :meth:`finish`."""

    def __init__(self, url: str, overwrite: bool = False):
        self.url = url
        self.replace_remote = exists(url)
        if self.replace_remote and not overwrite:
            raise ProbekitError(f"output store {url} already exists; pass --overwrite to replace it")
        if self.replace_remote and not is_probekit_store(remote_root_metadata(url)):
            raise ProbekitError(f"{url} is not a probekit results store; --overwrite replaces only a probekit "
                                "store, so choose another --out")
        self.scratch = Path(tempfile.mkdtemp(prefix="probekit-store-"))
        super().__init__(self.scratch / name_of(url))

    def discard(self) -> None:
        self.release()
        shutil.rmtree(self.scratch, ignore_errors=True)

    drop_staging = discard

    def finish(self, errors: dict[str, str], attrs: dict | None = None) -> None:
        super().finish(errors, attrs)
        try:
            upload(self.path, self.url, self.replace_remote)
        except OSError as exc:
            raise ProbekitError(f"uploading the results to {self.url} failed: {exc}; the complete store is kept "
                                f"at {self.path}") from exc
        shutil.rmtree(self.scratch, ignore_errors=True)


def settle_zarr_writes(timeout: float = 30.0) -> None:
    """Wait for zarr's pending writes. zarr 3 writes from its own event-loop thread; a signal that interrupts the
    main thread while it waits (SIGTERM during a write) leaves the write running, and it could recreate a store
    that was just removed."""
    import asyncio
    import concurrent.futures

    loop = getattr(getattr(zarr.core, "sync", None), "loop", [None])[0]
    if loop is None or not loop.is_running():
        return

    async def drain():
        current = asyncio.current_task()
        await asyncio.gather(*(t for t in asyncio.all_tasks() if t is not current), return_exceptions=True)

    try:
        asyncio.run_coroutine_threadsafe(drain(), loop).result(timeout)
    except concurrent.futures.TimeoutError:
        pass  # removal goes ahead; a write stuck for this long is not ours to wait for


def store_writer(location: str | Path, overwrite: bool = False, resume: bool = False) -> StoreWriter:
    """The writer for a local path or an fsspec URL (``resume`` only for local ones)."""
    if is_url(location):
        if resume:
            raise ProbekitError("--resume needs a local store; a store at a URL is built locally and uploaded at "
                                "the end, so rerun it")
        return RemoteStoreWriter(str(location), overwrite)
    return StoreWriter(location, overwrite, resume)


def store_status(path: str | Path) -> str:
    """The root's ``probekit_status``: ``complete``, ``failed`` or ``incomplete``."""
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as exc:
        raise ProbekitError(f"{path} is not a probekit results store: {exc}") from exc
    return str(group.attrs.get(STATUS_ATTR, "unknown"))


def open_results(path, chunks: dict | None = None, dim: str = "seed") -> xr.DataTree:
    """Open a results store (a path or an fsspec URL) as an ``xarray.DataTree``, one node per analysis.

    Several stores (a list, or a mapping of labels to stores) open as one tree whose nodes gain the dimension
    ``dim`` (``seed``, ``step``, ``model``...): see :func:`probekit.store.combine.combine_results`.

    Variables load on access. ``chunks={}`` makes them dask arrays in the store's own chunks (per-sample
    arrays are chunked along ``sample``), for out-of-core or dask.distributed analysis. An incomplete store
    (a run that was interrupted) still opens, with a warning. The store is untrusted input: its files, codecs,
    manifest and root checksum are checked before anything is decoded (:mod:`probekit.store.untrusted`). In a
    local store, a node whose files differ from the manifest written with it is left out of the tree, unread,
    with a warning naming what is wrong, and listed in the root attr ``damaged_nodes``; the other nodes stay
    readable.
    """
    if isinstance(path, (list, tuple, dict)):
        return combine_results(path, dim, chunks, open_results)
    if not exists(path):
        raise ProbekitError(f"results store not found: {path}")
    location = str(path) if is_url(path) else str(local_path(path))
    root = checked_root(location)
    attrs = root.get("attributes") or {}
    if STATUS_ATTR not in attrs:
        raise ProbekitError(f"{path} is not a probekit results store (its root has no {STATUS_ATTR})")
    status = str(attrs[STATUS_ATTR])
    if status == "incomplete":
        warnings.warn(f"{path} is incomplete: its run did not finish", stacklevel=2)
    damaged = {} if is_url(path) else _damaged_nodes(Path(location), attrs)
    for name, problem in damaged.items():
        warnings.warn(f"{path}: node {name!r} is damaged and left out: {problem}", stacklevel=2)
    # consolidated metadata when present (a run that died while finishing may have none)
    consolidated = None if status != "incomplete" else False
    try:
        if damaged:  # the damaged nodes are never opened: their chunks may decode into anything
            tree = _tree_without(location, set(damaged), chunks)
        else:
            tree = xr.open_datatree(location, engine="zarr", consolidated=consolidated, chunks=chunks)
    except ProbekitError:
        raise
    except Exception as exc:
        raise ProbekitError(f"{path} cannot be read as a results store: {type(exc).__name__}: {exc}") from exc
    if damaged:
        tree.attrs[DAMAGED_ATTR] = json.dumps(damaged)
    return tree


def checked_root(location: str) -> dict:
    """The root document of the store at ``location`` once every check of :mod:`probekit.store.untrusted`
    has passed."""
    if is_url(location):
        fs, base = filesystem(location)
        base = base.rstrip("/")
        files = [p[len(base) + 1:] for p in fs.find(base)]
        root = check_metadata(files, lambda rel: fs.cat_file(f"{base}/{rel}"), location)
    else:
        folder = Path(location)
        if not folder.is_dir():
            raise ProbekitError(f"{location} is not a probekit results store (not a folder)")
        root = check_metadata(local_files(folder), lambda rel: read_local(folder, rel), location)
    check_root_checksum(root, location)
    check_manifest_keys(json.loads((root.get("attributes") or {}).get(MANIFESTS_ATTR, "{}") or "{}"), location)
    return root


def _tree_without(location: str, left_out: set[str], chunks) -> xr.DataTree:
    """The store's tree without the nodes in ``left_out``, each remaining node opened on its own."""
    group = zarr.open_group(location, mode="r", use_consolidated=False)
    nodes = {"/": xr.Dataset(attrs=dict(group.attrs))}
    for name in sorted(n for n, _ in group.groups() if n not in left_out):
        nodes[name] = xr.open_dataset(location, group=name, engine="zarr", consolidated=False, chunks=chunks)
    return xr.DataTree.from_dict(nodes)


def _damaged_nodes(root: Path, attrs: dict) -> dict[str, str]:
    expected = json.loads(attrs.get(MANIFESTS_ATTR, "{}") or "{}")
    found = {name: damage(root / name, files) for name, files in expected.items()}
    return {name: problem for name, problem in found.items() if problem}


def describe(tree: xr.DataTree) -> str:
    """A readable multi-line summary of a store (``probekit show``)."""
    root = tree.attrs
    lines = [
        f"status:  {root.get(STATUS_ATTR, 'unknown')}",
        f"model:   {root.get('model', '?')}",
        f"data:    {root.get('dataset', '?')} ({root.get('n_samples', '?')} samples)",
        f"branches: {root.get('n_branches', '?')} found by {root.get('branch_strategy', '?')}",
        f"created: {root.get('created_at', '?')}  probekit {root.get('probekit_version', '?')}, "
        f"torch {root.get('torch_version', '?')}, seed {root.get('seed', '?')}",
    ]
    if root.get("note"):
        lines.append(f"note:    {root['note']}")
    errors = json.loads(root.get("errors", "{}") or "{}")
    for name, message in errors.items():
        lines.append(f"FAILED {name}: {message}")
    for name, problem in json.loads(root.get(DAMAGED_ATTR, "{}") or "{}").items():
        lines.append(f"DAMAGED {name}: {problem} (left out; the other nodes are intact)")
    if int(root.get("nonfinite_samples", 0)):
        ids = ", ".join(json.loads(root.get("nonfinite_sample_ids", "[]")))
        lines.append(f"WARNING: {root['nonfinite_samples']} samples gave NaN or Inf outputs or branch responses "
                     f"(first: {ids}); statistics that include them are NaN, not averages")
    for name, node in tree.children.items():
        ds = node.to_dataset()
        dims = ", ".join(f"{d}={n}" for d, n in ds.sizes.items())
        plugin = f"{node.attrs.get('plugin', '?')} {node.attrs.get('plugin_version', '')}"
        lines.append(f"\n[{name}] plugin {plugin}  ({dims})")
        for key, value in json.loads(node.attrs.get("summary", "{}")).items():
            lines.append(f"  {key}: {value}")
        for var_name, var in ds.data_vars.items():
            label = var.attrs.get("long_name", "")
            units = f" [{var.attrs['units']}]" if var.attrs.get("units") else ""
            lines.append(f"  - {var_name}{tuple(var.dims)}: {label}{units}")
    # every value above may come from a file someone else wrote: each line prints as one inert line
    return "\n".join(("\n" if line.startswith("\n") else "") + escape(line.lstrip("\n")) for line in lines)

