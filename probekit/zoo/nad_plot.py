"""Figures of a ``nad`` node: kept fractions, mosaic hit rate per layer, similarity, masked accuracy, and the
branch gates beside the branches' class profiles."""

from __future__ import annotations

import numpy as np
import xarray as xr

from probekit.report.plotting import MAX_MATRIX_LABELS, new_figure


def _class_ticks(ax, ds: xr.Dataset, axis: str) -> None:
    names = [str(c) for c in ds.class_name.values]
    if len(names) > MAX_MATRIX_LABELS:
        return
    (ax.set_yticks if axis == "y" else ax.set_xticks)(np.arange(len(names)), names, fontsize=7)


def _matrix(ds: xr.Dataset, var: str, label: str, title: str, xlabel: str, ylabel: str, **limits):
    fig, (ax,) = new_figure(label, title, 1, panel_size=(5.2, 4.4), max_cols=1)
    image = ax.imshow(ds[var].values, cmap="viridis", interpolation="nearest", **limits)
    _class_ticks(ax, ds, "x")
    _class_ticks(ax, ds, "y")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    fig.colorbar(image, ax=ax, label=f"{ds[var].attrs.get('long_name', var)} [1]")
    return fig


def kept_heatmap(ds: xr.Dataset):
    fig, (ax,) = new_figure("kept", "Kept fraction of each gated layer's channels, per class", 1,
                            panel_size=(max(5.0, 0.12 * len(ds.layer)), 4.0), max_cols=1)
    image = ax.imshow(ds.kept.values, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0, vmax=1)
    _class_ticks(ax, ds, "y")
    ax.set_xlabel("gated layer (model order)", fontsize=8)
    fig.colorbar(image, ax=ax, label="kept fraction [1]")
    return fig


def hit_rates(ds: xr.Dataset):
    fig, (ax,) = new_figure("hit-rate", "Mosaic hit rate of the masked CAM per layer (chance 0.25)", 1,
                            panel_size=(max(5.0, 0.12 * len(ds.layer)), 3.4), max_cols=1)
    x = np.arange(len(ds.layer))
    ax.plot(x, ds.hit_rate.values, marker=".", label="class mask")
    ax.plot(x, ds.hit_rate_unmasked.values, marker=".", color="grey", label="no mask (baseline)")
    ax.axhline(0.25, color="k", linestyle="--", linewidth=0.8, label="chance")
    ax.set_xlabel("gated layer (model order)", fontsize=8)
    ax.set_ylabel("hit rate [1]", fontsize=8)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    if not np.isfinite(ds.hit_rate.values).any():
        ax.set_title(ds.attrs.get("mosaic_note", ""), fontsize=8)
    return fig


def branch_profiles(ds: xr.Dataset):
    """Branch gates (or each branch's kept fraction) beside the branches' class profiles."""
    gates = "branch_gate" if "branch_gate" in ds else "kept_branch"
    panels = [gates] + (["branch_class_score"] if "branch_class_score" in ds else [])
    fig, axes = new_figure("branches", "Per class and branch: NAD's branch gates, beside the branch's "
                           "confidence in the class alone (specialization)", len(panels), panel_size=(5.0, 4.0))
    for ax, var in zip(axes, panels, strict=True):
        image = ax.imshow(ds[var].values, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0)
        _class_ticks(ax, ds, "y")
        ax.set_xlabel("branch", fontsize=8)
        ax.set_title(ds[var].attrs.get("long_name", var), fontsize=8)
        fig.colorbar(image, ax=ax)
    return fig


def plot_nad(ds: xr.Dataset) -> list:
    figures = [kept_heatmap(ds), hit_rates(ds),
               _matrix(ds, "similarity", "similarity", "Sub-architecture similarity S_ij = mean_l IoU(b_i, b_j)",
                       "class j", "class i", vmin=0, vmax=1),
               _matrix(ds, "masked_accuracy", "masked-accuracy", "Accuracy on class j's images with class i's mask",
                       "images of class j", "mask of class i", vmin=0, vmax=1)]
    if "kept_branch" in ds or "branch_gate" in ds:
        figures.append(branch_profiles(ds))
    return figures
