"""Figures of a ``chan-vese`` node: segmentation overlays on the generated images (paper Fig. 12)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from probekit.api import new_figure

MAX_SAMPLES = 24


def overlays(ds: xr.Dataset):
    """Per sample: the output, the Chan-Vese region's outline (yellow) and the kept eye pair (red, with
    centroids)."""
    n = min(MAX_SAMPLES, ds.sizes["sample"])
    found = int(ds.found.values[:n].sum())
    fig, axes = new_figure("overlays", f"Eye candidates on the generated images (pair found in {found}/{n}; "
                           f"init {ds.attrs['init']}, segment {ds.attrs['segment']})", n, panel_size=(1.7, 1.8),
                           max_cols=8)
    for i, ax in enumerate(axes):
        ax.imshow(np.clip(ds.output.values[i], 0, 1).transpose(1, 2, 0), interpolation="nearest")
        ax.contour(ds.region.values[i].astype(float), levels=[0.5], colors="yellow", linewidths=0.5)
        if ds.found.values[i]:
            ax.contour(ds.eyes.values[i].astype(float), levels=[0.5], colors="red", linewidths=0.9)
            ys, xs = ds.eye_centroid.values[i, :, 0], ds.eye_centroid.values[i, :, 1]
            ax.plot(xs, ys, "r+", markersize=5)
        ax.set_title(str(ds.sample_id.values[i])[-16:], fontsize=6)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def plot_chan_vese(ds: xr.Dataset) -> list | None:
    return [overlays(ds)] if "output" in ds else None
