"""Helpers for plugins' ``probekit_plot`` figures: headless, labeled, one panel per layer.

Figures are plain ``matplotlib.figure.Figure`` objects (no pyplot state), so
they render with the Agg backend anywhere and never pile up.
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

MAX_PANELS = 16  # layers drawn per figure; the caption says when there are more
MAX_TICK_LABELS = 40  # more branches than this in a panel: no per-branch tick labels
MAX_MATRIX_LABELS = 16  # the same for the rows and columns of a heatmap
MIN_WIDTH = 7.0  # inches


def new_figure(label: str, title: str, panels: int, panel_size: tuple[float, float] = (4.2, 3.2),
               max_cols: int = 4) -> tuple[Figure, list]:
    """A figure with ``panels`` axes in a grid; ``label`` names its file, ``title`` is its caption."""
    cols = min(max_cols, max(1, panels))
    rows = math.ceil(panels / cols)
    width = max(MIN_WIDTH, panel_size[0] * cols)  # room for the title over a single panel
    fig = Figure(figsize=(width, panel_size[1] * rows + 0.6), layout="constrained")
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(panels)]
    fig.set_label(label)
    fig.suptitle(title, fontsize=11)
    return fig, axes


def axis_label(var: xr.DataArray) -> str:
    """``long_name [units]`` from a variable's attrs (its name when it has none)."""
    name = var.attrs.get("long_name", var.name)
    units = var.attrs.get("units")
    return f"{name} [{units}]" if units else str(name)


def layers_of(ds: xr.Dataset, dim: str = "branch") -> list[str]:
    """The layer names in the order their branches appear along ``dim``."""
    return list(dict.fromkeys(ds[f"{dim}_layer"].values.tolist()))


def panel_caption(title: str, n_layers: int) -> str:
    """A figure title that says how many layers were left out, if any."""
    if n_layers > MAX_PANELS:
        return f"{title} (first {MAX_PANELS} of {n_layers} layers)"
    return title


def short_names(names, layer: str) -> list[str]:
    """Branch names without their layer prefix (``layer1.0.conv2[g=3]`` -> ``g=3``)."""
    out = []
    for name in names:
        rest = name[len(layer):] if name.startswith(layer) else name
        out.append(rest.strip(".[]") or name)
    return out


def branch_ticks(ax, axis: str, names: list[str], max_labels: int = MAX_TICK_LABELS) -> None:
    """Label each branch on ``axis`` ('x' or 'y') when there are at most ``max_labels``."""
    positions = np.arange(len(names))
    if len(names) > max_labels:
        getattr(ax, f"set_{axis}label")(f"branch ({len(names)}, sorted)")
        return
    if axis == "x":
        ax.set_xticks(positions, names, rotation=90, fontsize=7)
    else:
        ax.set_yticks(positions, names, fontsize=7)
