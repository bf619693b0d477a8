"""Results stores: an ``xarray.DataTree`` in zarr, one node per analysis.

Write protocol (so a crash never leaves half a node, and never loses an
older store):

* a new store is created with root attr ``status='incomplete'``;
* each node is assembled in ``<store>.tmp/<node>`` (per-sample arrays stream
  there during the pass) and then moved into the store with one ``os.replace``;
* at the end the root becomes ``status='complete'`` (or ``'failed'`` with the
  errors), and metadata are consolidated;
* with ``overwrite`` the new store is built at ``<store>.new`` and swapped in
  only when complete, so a crash keeps the old store.

A store at an fsspec URL is built locally by the same protocol, in a
temporary folder, and uploaded when complete (:mod:`probekit.store_location`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import xarray as xr
import zarr

from .errors import ProbekitError
from .store_location import exists, is_url, local_path, name_of, upload
from .store_manifest import damage, manifest

STATUS_ATTR = "probekit_status"
MANIFESTS_ATTR = "manifests"
DAMAGED_ATTR = "damaged_nodes"
NODE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")


def check_node_name(name: str) -> str:
    """``name`` if it is a safe node (and analysis) name: lowercase letters, digits, ``-`` and ``_``, starting
    with a letter, at most 64 characters; so no path separators, ``..`` or hidden files."""
    if not isinstance(name, str) or not NODE_NAME.fullmatch(name):
        raise ProbekitError(f"{name!r} is not a valid analysis or node name (lowercase letters, digits, - and _, "
                            "starting with a letter)")
    return name


def _plain_strings(ds: xr.Dataset) -> xr.Dataset:
    """Fixed-width unicode arrays as object arrays (zarr 3 stores those as portable vlen strings)."""
    converted = {
        name: var.astype(object) for name, var in ds.variables.items() if var.dtype.kind == "U"
    }
    return ds.assign_coords({k: v for k, v in converted.items() if k in ds.coords}).assign(
        {k: v for k, v in converted.items() if k not in ds.coords}
    )


class StoreWriter:
    """Writes one run's store following the protocol in the module docstring."""

    def __init__(self, path: str | Path, overwrite: bool = False, resume: bool = False):
        self.path = local_path(path)
        if self.path.exists() and not (overwrite or resume):
            raise ProbekitError(f"output store {self.path} already exists; pass --overwrite to replace it")
        self.replacing = self.path.exists() and not resume
        self.manifests: dict[str, dict[str, int]] = {}
        self.target = self.path.with_name(self.path.name + ".new") if self.replacing else self.path
        self.tmp = self.path.with_name(self.path.name + ".tmp")

    def create(self, attrs: dict[str, Any]) -> None:
        """Make the empty store, marked incomplete (and clear what a crashed run left)."""
        for leftover in (self.target, self.tmp):
            if leftover != self.path and leftover.exists():
                shutil.rmtree(leftover)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        try:
            group = zarr.open_group(str(self.target), mode="w-", zarr_format=3)
        except Exception as exc:
            raise ProbekitError(f"cannot create output store {self.path}: {exc}") from exc
        group.attrs.update({**attrs, STATUS_ATTR: "incomplete"})

    def reopen(self) -> None:
        """Continue writing an interrupted run's store (``--resume``) instead of creating one."""
        if not self.path.exists():
            raise ProbekitError(f"{self.path} does not exist: there is no interrupted run to resume")
        status = store_status(self.path)
        if status != "incomplete":
            raise ProbekitError(f"{self.path} is {status}: only an interrupted (incomplete) run can be resumed")

    def staging(self, name: str) -> Path:
        """The folder where node ``name`` is assembled (per-sample arrays stream into it)."""
        return self.tmp / check_node_name(name)

    def write_node(self, name: str, ds: xr.Dataset) -> None:
        """Write one analysis node atomically, next to any per-sample arrays already streamed."""
        staging = self.staging(name)  # checks the name
        mode = "a" if staging.exists() else "w-"
        self.tmp.mkdir(exist_ok=True)
        _plain_strings(ds).to_zarr(str(staging), mode=mode, consolidated=False, zarr_format=3)
        final = self.target / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        self.manifests[name] = manifest(final)

    def discard(self) -> None:
        """Remove this run's unfinished store (never an older store being replaced)."""
        for path in (self.target, self.tmp):
            if path.exists():
                shutil.rmtree(path)

    def finish(self, errors: dict[str, str], attrs: dict | None = None) -> None:
        """Mark the store complete (or failed), add ``attrs`` to the root, consolidate, and swap it in."""
        group = zarr.open_group(str(self.target), mode="r+")
        group.attrs.update({**(attrs or {}), STATUS_ATTR: "failed" if errors else "complete",
                            "errors": json.dumps(errors), MANIFESTS_ATTR: json.dumps(self.manifests)})
        with warnings.catch_warnings():  # zarr 3 warns that consolidation is not in its v3 spec yet
            warnings.simplefilter("ignore", UserWarning)
            zarr.consolidate_metadata(str(self.target))
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        if self.replacing:
            old = self.path.with_name(self.path.name + ".old")
            os.replace(self.path, old)
            os.replace(self.target, self.path)
            shutil.rmtree(old)


class RemoteStoreWriter(StoreWriter):
    """A :class:`StoreWriter` for an fsspec URL: builds the store in a local temporary folder, uploads it at
    :meth:`finish`."""

    def __init__(self, url: str, overwrite: bool = False):
        self.url = url
        self.replace_remote = exists(url)
        if self.replace_remote and not overwrite:
            raise ProbekitError(f"output store {url} already exists; pass --overwrite to replace it")
        self.scratch = Path(tempfile.mkdtemp(prefix="probekit-store-"))
        super().__init__(self.scratch / name_of(url))

    def discard(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)

    def finish(self, errors: dict[str, str], attrs: dict | None = None) -> None:
        super().finish(errors, attrs)
        try:
            upload(self.path, self.url, self.replace_remote)
        except OSError as exc:
            raise ProbekitError(f"uploading the results to {self.url} failed: {exc}; the complete store is kept "
                                f"at {self.path}") from exc
        shutil.rmtree(self.scratch, ignore_errors=True)


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


def open_results(path: str | Path, chunks: dict | None = None) -> xr.DataTree:
    """Open a results store (a path or an fsspec URL) as an ``xarray.DataTree``, one node per analysis.

    Variables load on access. ``chunks={}`` makes them dask arrays in the store's own chunks (per-sample
    arrays are chunked along ``sample``), for out-of-core or dask.distributed analysis. An incomplete store
    (a run that was interrupted) still opens, with a warning. In a local store, a node whose files differ
    from the manifest written with it is left out of the tree, with a warning naming what is wrong, and
    listed in the root attr ``damaged_nodes``; the other nodes stay readable.
    """
    if not exists(path):
        raise ProbekitError(f"results store not found: {path}")
    location = str(path) if is_url(path) else str(local_path(path))
    status = store_status(location)
    if status == "incomplete":
        warnings.warn(f"{path} is incomplete: its run did not finish", stacklevel=2)
    # consolidated metadata when present (a run that died while finishing may have none)
    tree = xr.open_datatree(location, engine="zarr", consolidated=None if status != "incomplete" else False,
                            chunks=chunks)
    damaged = {} if is_url(path) else _damaged_nodes(Path(location), tree.attrs)
    for name, problem in damaged.items():
        warnings.warn(f"{path}: node {name!r} is damaged and left out: {problem}", stacklevel=2)
    if damaged:
        tree = tree.drop_nodes([n for n in damaged if n in tree.children])
        tree.attrs[DAMAGED_ATTR] = json.dumps(damaged)
    return tree


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
    return "\n".join(lines)

