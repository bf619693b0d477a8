"""Figures of a ``specialization`` node: branch x class profiles (paper Figs. 6 and 7)."""

from __future__ import annotations

import textwrap

import numpy as np
import xarray as xr
from matplotlib import colormaps

from probekit.api import axis_label, branch_ticks, layers_of, MAX_PANELS, new_figure, panel_caption, short_names


def _heatmap(fig, ax, values, ds, label, cmap, vmin=None, vmax=None):
    image = ax.imshow(values, aspect="auto", cmap=cmap, interpolation="nearest", vmin=vmin, vmax=vmax)
    ax.set_xticks(np.arange(ds.sizes["cls"]), [str(c) for c in ds.class_name.values], rotation=60, fontsize=7)
    ax.set_yticks(np.arange(ds.sizes["branch"]), [str(b) for b in ds.branch.values], fontsize=7)
    fig.colorbar(image, ax=ax, label=label)


def response_profiles(ds: xr.Dataset):
    """Responses mode: per layer, each class's mean response norm per branch, relative to the class's largest."""
    layers = layers_of(ds)
    fig, axes = new_figure("profiles", panel_caption("Mean response norm per class, relative to the class's "
                                                     "largest branch", len(layers)), min(len(layers), MAX_PANELS),
                           panel_size=(4.8, 3.6))
    for ax, layer in zip(axes, layers[:MAX_PANELS], strict=True):
        index = np.flatnonzero(ds.branch_layer.values == layer)
        block = ds.class_score.values[index].T  # [cls, branch]
        relative = block / np.maximum(block.max(1, keepdims=True), 1e-12)
        image = ax.imshow(relative, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(layer, fontsize=9)
        ax.set_yticks(np.arange(ds.sizes["cls"]), [str(c) for c in ds.class_name.values], fontsize=7)
        branch_ticks(ax, "x", short_names(ds.branch.values[index], layer))
        fig.colorbar(image, ax=ax, label="response / class's largest [1]")
    return [fig]


def plot_specialization(ds: xr.Dataset) -> list:
    if ds.attrs.get("mode") == "responses":
        return response_profiles(ds)
    order = np.argsort(-ds.specialization.values, kind="stable")
    ordered = ds.isel(branch=order)
    profiles, panels = new_figure("profiles", "Class profiles of the branches, most specialized first", 2,
                                  panel_size=(5.6, 4.6), max_cols=2)
    _heatmap(profiles, panels[0], ordered.alone_confidence.values, ordered, axis_label(ds.alone_confidence),
             "viridis", 0, None)
    panels[0].set_title("confidence in the true class, branch alone", fontsize=9)
    share = ordered.logit_share.values
    limit = float(np.abs(share).max()) or 1.0
    _heatmap(profiles, panels[1], share, ordered, axis_label(ds.logit_share), "RdBu_r", -limit, limit)
    panels[1].set_title("share of the true-class score", fontsize=9)

    tops, (bars, index) = new_figure("top-branch", "Which branch contributes most, per class; and how "
                                     "specialized each branch is", 2, panel_size=(5.6, 4.0), max_cols=2)
    fractions = ds.top_fraction.values  # [branch, cls]
    bottom = np.zeros(ds.sizes["cls"])
    colors = colormaps["tab20"](np.linspace(0, 1, ds.sizes["branch"]))
    for k in range(ds.sizes["branch"]):
        bars.bar(np.arange(ds.sizes["cls"]), fractions[k], bottom=bottom, color=colors[k],
                 label=str(ds.branch.values[k]))
        bottom += fractions[k]
    bars.set_xticks(np.arange(ds.sizes["cls"]), [str(c) for c in ds.class_name.values], rotation=60, fontsize=7)
    bars.set_ylabel(textwrap.fill(axis_label(ds.top_fraction), 45), fontsize=8)  # wrapped: never clipped
    tops.legend(*bars.get_legend_handles_labels(), loc="outside lower center", fontsize=6,
                ncols=min(8, ds.sizes["branch"]), title="branch", title_fontsize=7)  # below the bars, never on them
    index.barh(np.arange(ds.sizes["branch"]), ordered.specialization.values, color="#2a6fbb")
    index.set_yticks(np.arange(ds.sizes["branch"]), [str(b) for b in ordered.branch.values], fontsize=7)
    index.invert_yaxis()
    index.set_xlabel(axis_label(ds.specialization))
    return [profiles, tops]
