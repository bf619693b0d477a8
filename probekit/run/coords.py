"""Coordinates of the results schema (docs/schema.md), built from a run's context."""

from __future__ import annotations

import numpy as np

from probekit.run.analysis import RunContext


def branch_coords(context: RunContext, dim: str = "branch") -> dict:
    """``dim`` with branch names, plus ``<dim>_layer`` and ``<dim>_group`` on it."""
    bs = context.branchset
    return {
        dim: (dim, np.array(bs.names, dtype=object)),
        f"{dim}_layer": (dim, np.array(bs.layer_of_branch, dtype=object)),
        f"{dim}_group": (dim, np.array(bs.group_of_branch, dtype=np.int64)),
    }


def layer_coords(context: RunContext) -> dict:
    """``layer`` with the layer names, in branch-set order."""
    return {"layer": ("layer", np.array([layer.name for layer in context.branchset.layers], dtype=object))}


def sample_coords(context: RunContext, targets: np.ndarray | None = None) -> dict:
    """``sample`` (position 0..N-1) with ``sample_id`` (the dataset's own id) and, when known, ``target``."""
    n = context.n_samples
    coords = {
        "sample": ("sample", np.arange(n)),
        "sample_id": ("sample", np.array(list(context.data.sample_ids[:n]), dtype=object)),
    }
    if targets is not None:
        coords["target"] = ("sample", targets)
    return coords


def class_coords(context: RunContext) -> dict:
    """``cls`` with class indices and their names (``class_name``)."""
    names = context.data.classes or []
    return {"cls": ("cls", np.arange(len(names))), "class_name": ("cls", np.array(names, dtype=object))}
