"""Figures of a ``similarity`` node: one CKA heatmap per layer."""

from __future__ import annotations

import numpy as np
import xarray as xr

from probekit.api import branch_ticks, layers_of, MAX_MATRIX_LABELS, MAX_PANELS, new_figure, panel_caption, short_names


def plot_similarity(ds: xr.Dataset) -> list:
    layers = layers_of(ds)
    fig, axes = new_figure("cka", panel_caption("Linear CKA between the branches of each layer", len(layers)),
                           min(len(layers), MAX_PANELS), panel_size=(4.4, 3.8))
    for ax, layer in zip(axes, layers[:MAX_PANELS], strict=True):
        index = np.flatnonzero(ds.branch_layer.values == layer)
        image = ax.imshow(ds.cka.values[np.ix_(index, index)], cmap="viridis", interpolation="nearest", vmin=0,
                          vmax=1)
        method = str(ds.cka_method.sel(layer=layer).values)
        ax.set_title(f"{layer}: mean {float(ds.mean_cka.sel(layer=layer)):.3f} ({method})", fontsize=9)
        names = short_names(ds.branch.values[index], layer)
        branch_ticks(ax, "x", names, MAX_MATRIX_LABELS)
        branch_ticks(ax, "y", names, MAX_MATRIX_LABELS)
        fig.colorbar(image, ax=ax, label="CKA [1]")
    return [fig]
