"""Figure of a ``gradient-factors`` node: per branch, what zeroes its gradient, as stacked shares."""

from __future__ import annotations

import numpy as np
import xarray as xr

from probekit.api import axis_label, layers_of, MAX_PANELS, new_figure, panel_caption, short_names

COLORS = {"neither": "#2a6fbb", "collaborative": "#7fbf7b", "distributive": "#d95f02", "both": "#9e9e9e"}


def plot_gradient_factors(ds: xr.Dataset) -> list:
    layers = layers_of(ds)
    fig, axes = new_figure("causes", panel_caption(
        "What zeroes each branch's gradient, sample by sample",
        len(layers)), min(len(layers), MAX_PANELS), panel_size=(6.0, 3.4), max_cols=2)
    fractions = ds.zeroed_fraction.values  # [branch, cause], small
    causes = [str(c) for c in ds.cause.values]
    for ax, layer in zip(axes, layers[:MAX_PANELS], strict=True):
        index = np.flatnonzero(ds.branch_layer.values == layer)
        names = short_names(ds.branch.values[index], layer)
        left = np.zeros(len(index))
        for c, cause in enumerate(causes):
            ax.barh(np.arange(len(index)), fractions[index, c], left=left, color=COLORS.get(cause), label=cause)
            left += fractions[index, c]
        ax.set_yticks(np.arange(len(index)), names if len(index) <= 40 else [""] * len(index), fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel(axis_label(ds.zeroed_fraction))
        ax.set_title(layer, fontsize=9)
        ax.legend(fontsize=7, loc="lower right", ncols=2)
    return [fig]
