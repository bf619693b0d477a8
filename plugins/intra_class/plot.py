"""Figures of an ``intra-class`` node: per class, the favourite samples of its leading branches (Fig. 8)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from probekit.api import new_figure

BRANCH_ROWS = 3
MAX_CLASSES = 10


def _as_image(values: np.ndarray) -> np.ndarray:
    """``[C, H, W]`` -> something imshow draws: RGB for 3 channels, else the first channel; scaled to [0, 1]."""
    image = values.transpose(1, 2, 0) if values.shape[0] == 3 else values[0]
    low, high = float(image.min()), float(image.max())
    return (image - low) / (high - low) if high > low else np.zeros_like(image)


def class_figure(ds: xr.Dataset, c: int):
    name = str(ds.class_name.values[c])
    scores = ds.top_score.values[:, c]  # [branch, rank], NaN past a class's samples
    counts = np.isfinite(scores).sum(axis=1)
    mean_confidence = np.where(counts > 0, np.nansum(scores, axis=1) / np.maximum(counts, 1), -1.0)
    leaders = np.argsort(-mean_confidence)[:BRANCH_ROWS]
    shown = [_shown(ds, k, c) for k in leaders]
    thumbs = max(1, max(shown))  # the canvas fits the thumbnails there are, not the most there could be
    fig, axes = new_figure(f"class-{c}", f"Class {name}: the samples its {len(leaders)} leading branches score "
                           "highest\n(above each: the branch's confidence in the true class)", len(leaders) * thumbs,
                           panel_size=(1.1, 1.2), max_cols=thumbs)
    for row, k in enumerate(leaders):
        for t in range(thumbs):
            ax = axes[row * thumbs + t]
            ax.set_xticks([])
            ax.set_yticks([])
            confidence = ds.top_score.values[k, c, t] if t < min(ds.sizes["rank"], ds.sizes["thumb"]) else np.nan
            if np.isnan(confidence) or ds.thumbnail_row.values[k, c, t] < 0:
                ax.set_axis_off()
                continue
            ax.imshow(_as_image(ds.thumbnail.values[ds.thumbnail_row.values[k, c, t]]), cmap="gray",
                      interpolation="nearest")
            ax.set_title(f"conf. {confidence:.2f}", fontsize=7)
            if t == 0:
                ax.set_ylabel(str(ds.branch.values[k]), fontsize=7)
    return fig


def _shown(ds: xr.Dataset, k: int, c: int) -> int:
    """How many thumbnails branch ``k`` has for class ``c``."""
    limit = min(ds.sizes["rank"], ds.sizes["thumb"])
    scores, rows = ds.top_score.values[k, c, :limit], ds.thumbnail_row.values[k, c, :limit]
    return int((np.isfinite(scores) & (rows >= 0)).sum())


def plot_intra_class(ds: xr.Dataset) -> list | None:
    if "thumbnail" not in ds:
        return None
    return [class_figure(ds, c) for c in range(min(ds.sizes["cls"], MAX_CLASSES))]
