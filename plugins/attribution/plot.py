"""Figure of an ``attribution`` node: each branch's mean attribution map per class."""

from __future__ import annotations

import xarray as xr

from probekit.api import new_figure


def plot_attribution(ds: xr.Dataset) -> list:
    branches, classes = ds.sizes["branch"], ds.sizes["cls"]
    fig, axes = new_figure("class-maps", f"Mean |{ds.attrs.get('method', 'attribution')}| per branch (rows) and "
                           "class (columns), each map scaled to its own maximum", branches * classes,
                           panel_size=(0.9, 0.9), max_cols=classes)
    maps = ds.class_map.values  # [K, C, H, W], small
    for k in range(branches):
        for c in range(classes):
            ax = axes[k * classes + c]
            image = maps[k, c]
            ax.imshow(image / image.max() if image.max() > 0 else image, cmap="inferno", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_title(str(ds.class_name.values[c]), fontsize=7)
            if c == 0:
                ax.set_ylabel(str(ds.branch.values[k]), fontsize=6)
    return [fig]
