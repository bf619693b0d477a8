"""Several results stores as one DataTree with a new dimension: seeds, checkpoints (``step``) or models."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pandas as pd
import xarray as xr

from probekit.errors import ProbekitError

COMBINED_ATTR = "probekit_combined"  # root attr of a combined tree: the new dimension's name


def _labels(stores: Sequence | Mapping, dim: str, trees: list[xr.DataTree]) -> list:
    """The new dimension's coordinate: the mapping's keys; for a list, each run's root attr named ``dim``
    (``seed`` is one) when every store has a distinct one, else 0, 1, ..."""
    if isinstance(stores, Mapping):
        return list(stores)
    found = [tree.attrs.get(dim) for tree in trees]
    if all(value is not None for value in found) and len(set(map(str, found))) == len(found):
        return found
    return list(range(len(trees)))


def combine_results(stores: Sequence[str | Path] | Mapping[object, str | Path], dim: str,
                    chunks: dict | None, open_one: Callable[..., xr.DataTree]) -> xr.DataTree:
    """One DataTree over ``stores`` (a list, or a mapping of labels to stores): each node's variables gain the
    leading dimension ``dim`` (dask arrays, read lazily). A node missing from some stores holds the others only;
    variables or coordinates that differ in size are outer-joined (NaN where a store has no entry). Root attrs
    that differ between the stores are dropped; the root attr ``probekit_stores`` lists the stores in order.
    ``open_one(path, chunks=...)`` opens one store (:func:`probekit.store.results.open_results`)."""
    paths = list(stores.values()) if isinstance(stores, Mapping) else list(stores)
    if not paths:
        raise ProbekitError("no results store to combine")
    if not dim.isidentifier():
        raise ProbekitError(f"the combined dimension's name must be an identifier, not {dim!r}")
    trees = [open_one(path, chunks={} if chunks is None else chunks) for path in paths]
    labels = _labels(stores, dim, trees)
    names = list(dict.fromkeys(name for tree in trees for name in tree.children))
    nodes = {}
    for name in names:
        members = [(label, tree[name].to_dataset()) for label, tree in zip(labels, trees, strict=True)
                   if name in tree.children]
        if any(dim in ds.dims for _, ds in members):
            raise ProbekitError(f"node {name!r} already has a dimension {dim!r}; combine along another name")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # xarray's coming change of concat defaults
            nodes[name] = xr.concat([ds for _, ds in members], dim=pd.Index([lb for lb, _ in members], name=dim),
                                    data_vars="all", coords="minimal", compat="override", join="outer",
                                    combine_attrs="drop_conflicts")
    root = xr.Dataset(attrs={**{k: v for k, v in trees[0].attrs.items()
                                if all(t.attrs.get(k) == v for t in trees[1:])},
                             COMBINED_ATTR: dim, "probekit_stores": [str(p) for p in paths]})
    return xr.DataTree.from_dict({"/": root, **{f"/{name}": ds for name, ds in nodes.items()}})
