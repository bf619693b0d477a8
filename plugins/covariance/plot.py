"""Figures of a ``covariance`` node: covariance and correlation heatmaps (paper Figs. 3 right, 5)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from probekit.api import (axis_label, branch_ticks, layers_of, MAX_MATRIX_LABELS, MAX_PANELS, new_figure,
                          panel_caption, short_names)


def _ordered_block(ds: xr.Dataset, var: str, layer: str) -> tuple[np.ndarray, list[str]]:
    """``var``'s block for ``layer``, branches ordered by activity (the diagonal of F F^T is |F_k|^2 / N)."""
    index = np.flatnonzero(ds.branch_layer.values == layer)
    diagonal = ds.cov.values[index, index]
    order = index[np.argsort(-diagonal, kind="stable")]
    return ds[var].values[np.ix_(order, order)], short_names(ds.branch.values[order], layer)


def heatmaps(ds: xr.Dataset, var: str, title: str, cmap: str, value_range: tuple[float, float] | None):
    """One heatmap per layer of ``var`` (``value_range`` fixes the colour scale)."""
    layers = layers_of(ds)
    fig, axes = new_figure(var, panel_caption(title, len(layers)), min(len(layers), MAX_PANELS),
                           panel_size=(4.4, 3.8))
    for ax, layer in zip(axes, layers[:MAX_PANELS], strict=True):
        block, names = _ordered_block(ds, var, layer)
        vmin, vmax = value_range or (None, None)
        image = ax.imshow(block, cmap=cmap, interpolation="nearest", vmin=vmin, vmax=vmax)
        ax.set_title(layer, fontsize=9)
        branch_ticks(ax, "x", names, MAX_MATRIX_LABELS)
        branch_ticks(ax, "y", names, MAX_MATRIX_LABELS)
        fig.colorbar(image, ax=ax, label=axis_label(ds[var]))
    return fig


def plot_covariance(ds: xr.Dataset) -> list:
    return [
        heatmaps(ds, "corr", "Branch response correlation, branches ordered by activity", "RdBu_r", (-1.0, 1.0)),
        heatmaps(ds, "cov", "Branch response covariance F F^T / N, branches ordered by activity", "magma", None),
    ]
