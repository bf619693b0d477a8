"""Figures of an ``importance`` node: per layer, each branch's true ablation (bars, with standard errors) beside
its first-order estimate, one panel per layer and ablation."""

from __future__ import annotations

import numpy as np
import xarray as xr

from probekit.api import branch_ticks, layers_of, MAX_MATRIX_LABELS, MAX_PANELS, new_figure, panel_caption, short_names


def plot_importance(ds: xr.Dataset) -> list:
    layers, modes = layers_of(ds), list(ds.ablation.values)
    panels = [(layer, mode) for layer in layers for mode in modes][:MAX_PANELS]
    fig, axes = new_figure("importance", panel_caption("Change in loss with each branch ablated (bars, +- 1 s.e.) "
                                                       "and its attribution-patching estimate (dots)", len(layers)),
                           len(panels), panel_size=(4.6, 3.0), max_cols=len(modes))
    for ax, (layer, mode) in zip(axes, panels, strict=True):
        index = np.flatnonzero(ds.branch_layer.values == layer)
        x = np.arange(len(index))
        change = ds.ablation_loss_change.sel(ablation=mode).values[index]
        ax.bar(x, change, yerr=ds.ablation_loss_change_se.sel(ablation=mode).values[index], color="tab:blue",
               alpha=0.7, label="ablation")
        ax.plot(x, ds.estimate.sel(ablation=mode).values[index], "o", color="tab:orange", markersize=3,
                label="estimate")
        rho = float(ds.spearman.sel(layer=layer, ablation=mode))
        ranked = f"Spearman {rho:.2f}" if np.isfinite(rho) else "Spearman n/a (fewer than 3 branches)"
        ax.set_title(f"{layer}, {mode}: {ranked}", fontsize=9)
        ax.axhline(0, color="0.5", linewidth=0.6)
        ax.set_ylabel("loss change [loss per sample]", fontsize=7)
        branch_ticks(ax, "x", short_names(ds.branch.values[index], layer), MAX_MATRIX_LABELS)
        ax.legend(fontsize=6)
    return [fig]
