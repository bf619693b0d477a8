"""Figures of an ``activity`` node: sorted branch norms (paper Figs. 4, 6) and per-class norms."""

from __future__ import annotations

import numpy as np
import xarray as xr

from probekit.api import axis_label, branch_ticks, layers_of, MAX_PANELS, new_figure, panel_caption, short_names

ACTIVE_COLOR, SILENT_COLOR = "#2a6fbb", "#b8b8b8"


def _layer_order(ds: xr.Dataset, layer: str) -> tuple[np.ndarray, list[str]]:
    """Indices of ``layer``'s branches, sorted by norm (largest first), and their short names."""
    in_layer = np.flatnonzero(ds.branch_layer.values == layer)
    order = in_layer[np.argsort(-ds.norm.values[in_layer], kind="stable")]
    return order, short_names(ds.branch.values[order], layer)


def norm_bars(ds: xr.Dataset):
    """One panel per layer: branch norms sorted, active in blue, silent in grey, the threshold dashed."""
    layers = layers_of(ds)
    threshold = float(ds.attrs.get("threshold", 0.1))
    fig, axes = new_figure("norms", panel_caption("Branch response norms, sorted: active (blue) and silent (grey)",
                                                  len(layers)), min(len(layers), MAX_PANELS))
    norms, active = ds.norm.values, ds.active.values
    for index, (ax, layer) in enumerate(zip(axes, layers[:MAX_PANELS], strict=True)):
        order, names = _layer_order(ds, layer)
        colors = np.where(active[order] == 1, ACTIVE_COLOR, SILENT_COLOR)
        ax.bar(np.arange(len(order)), norms[order], color=colors)
        ax.axhline(threshold * norms[order].max(), color="k", linestyle="--", linewidth=0.8,
                   label=f"{threshold:g} x largest")
        known = np.isfinite(active[order]).all()
        ax.set_title(f"{layer}: {int(active[order].sum()) if known else 'unknown'}/{len(order)} active", fontsize=9)
        ax.set_ylabel(axis_label(ds.norm), fontsize=8)
        branch_ticks(ax, "x", names)
        if index == 0:
            ax.legend(fontsize=7, loc="upper right")
    return fig


MAX_CLASS_ROWS = 30  # classes drawn per panel: more are unreadable (and slow to draw)


def shown_classes(ds: xr.Dataset) -> tuple[np.ndarray, str]:
    """The rows of the classes to draw, those with probed samples (the :data:`MAX_CLASS_ROWS` with the most when
    more), and a caption clause saying which."""
    count = ds.class_count.values if "class_count" in ds else np.isfinite(ds.class_norm.values).all(1).astype(int)
    seen = np.flatnonzero(count > 0)
    if len(seen) <= MAX_CLASS_ROWS:
        return seen, "" if len(seen) == len(count) else f"; the {len(seen)} of {len(count)} classes probed"
    top = np.sort(seen[np.argsort(-count[seen], kind="stable")[:MAX_CLASS_ROWS]])
    return top, f"; the {MAX_CLASS_ROWS} of {len(count)} classes with the most probed samples"


def class_heatmaps(ds: xr.Dataset):
    """One panel per layer: per class (rows), each branch's norm relative to the class's largest
    branch in that layer (columns sorted by overall norm); a dot marks branches silent for the class."""
    layers = layers_of(ds)
    rows, shown = shown_classes(ds)
    title = f"Branch response norm per class, relative to the class's largest branch (dot: silent){shown}"
    fig, axes = new_figure("classes", panel_caption(title, len(layers)), min(len(layers), MAX_PANELS),
                           panel_size=(4.8, 3.6))
    class_norm, class_active = ds.class_norm.values[rows], ds.class_active.values[rows]  # [cls, branch], small
    class_names = [str(c) for c in ds.class_name.values[rows]]
    for ax, layer in zip(axes, layers[:MAX_PANELS], strict=True):
        order, names = _layer_order(ds, layer)
        block = class_norm[:, order]
        peak = block.max(axis=1, keepdims=True)
        relative = np.divide(block, peak, out=np.zeros_like(block), where=peak > 0)
        image = ax.imshow(relative, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0, vmax=1)
        rows, cols = np.nonzero(class_active[:, order] == 0)
        ax.scatter(cols, rows, s=6, color="white", marker="o", linewidths=0)
        ax.set_title(layer, fontsize=9)
        ax.set_yticks(np.arange(len(class_names)), class_names, fontsize=7)
        ax.set_ylabel("class", fontsize=8)
        branch_ticks(ax, "x", names)
        fig.colorbar(image, ax=ax, label="norm / class's largest [1]")
    return fig


def routing_bars(ds: xr.Dataset):
    """One panel per gated layer: each expert's routing share (bars, active blue, silent grey) and the share
    of samples routed to it (dots); with classes, a second row of per-class routing shares."""
    gated = [layer for layer in layers_of(ds)
             if np.isfinite(ds.routing_share.values[ds.branch_layer.values == layer]).any()][:MAX_PANELS]
    per_class = "class_routing_share" in ds
    fig, axes = new_figure("routing", "Expert routing: mean gate value (bars) and share of samples routed (dots)"
                           + ("; per class below" if per_class else ""), len(gated) * (2 if per_class else 1),
                           max_cols=len(gated))
    for ax, layer in zip(axes, gated, strict=False):
        index = np.flatnonzero(ds.branch_layer.values == layer)
        names = short_names(ds.branch.values[index], layer)
        colors = np.where(ds.active.values[index] == 1, ACTIVE_COLOR, SILENT_COLOR)
        ax.bar(np.arange(len(index)), ds.routing_share.values[index], color=colors, label="routing share")
        ax.plot(np.arange(len(index)), ds.routed_fraction.values[index], "k.", label="samples routed")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{layer}: {int(np.nansum(ds.active.values[index]))}/{len(index)} active", fontsize=9)
        ax.set_ylabel("share [1]", fontsize=8)
        branch_ticks(ax, "x", names)
        ax.legend(fontsize=7, loc="upper right")
    for ax, layer in zip(axes[len(gated):], gated, strict=False):
        index = np.flatnonzero(ds.branch_layer.values == layer)
        rows, _ = shown_classes(ds)
        image = ax.imshow(ds.class_routing_share.values[rows][:, index], aspect="auto", cmap="viridis",
                          interpolation="nearest", vmin=0)
        ax.set_yticks(np.arange(len(rows)), [str(c) for c in ds.class_name.values[rows]], fontsize=7)
        ax.set_ylabel("class", fontsize=8)
        branch_ticks(ax, "x", short_names(ds.branch.values[index], layer))
        fig.colorbar(image, ax=ax, label="mean gate value [1]")
    return fig


def plot_activity(ds: xr.Dataset) -> list:
    figures = [norm_bars(ds)]
    if "class_norm" in ds:
        figures.append(class_heatmaps(ds))
    if "routing_share" in ds:
        figures.append(routing_bars(ds))
    return figures
