"""Figures of a ``class-filters`` node: feature frequency per class, Psi against k, branch shares, decomposed
accuracy against k."""

from __future__ import annotations

import numpy as np
import xarray as xr

from probekit.api import new_figure


def frequency_heatmap(ds: xr.Dataset):
    """Class x feature top-k frequency (the largest k), with the boundaries between branches."""
    k = int(ds.k.max())
    fig, (ax,) = new_figure("frequency", f"How often each feature is among a sample's top {k}, per class "
                            "(lines: branch boundaries)", 1, panel_size=(10, 3.6), max_cols=1)
    counts = ds["count"].sel(k=k).values.astype(float)
    per_class = np.maximum(counts.max(axis=1, keepdims=True), 1)
    image = ax.imshow(counts / per_class, aspect="auto", cmap="magma", interpolation="nearest", vmin=0, vmax=1)
    owners = ds.feature_branch.values
    for boundary in np.flatnonzero(owners[1:] != owners[:-1]) + 1:
        ax.axvline(boundary - 0.5, color="cyan", linewidth=0.6)
    ax.set_yticks(np.arange(len(ds.cls)), [str(c) for c in ds.class_name.values], fontsize=7)
    ax.set_xlabel("feature", fontsize=8)
    fig.colorbar(image, ax=ax, label="count / class's largest [1]")
    return fig


def psi_curves(ds: xr.Dataset):
    """Psi_c against the mass fraction, one line per class."""
    fig, (ax,) = new_figure("psi", "Psi_c(k) = (D - median n_k) / D: how few features hold fraction k of the mass",
                            1, max_cols=1)
    for c, name in zip(ds.cls.values, ds.class_name.values, strict=True):
        ax.plot(ds.fraction.values, ds.psi.sel(cls=c).values, marker=".", label=str(name))
    ax.set_xlabel("fraction k of the L1 norm [1]", fontsize=8)
    ax.set_ylabel("Psi [1]", fontsize=8)
    ax.legend(fontsize=6, ncol=2)
    return fig


def branch_shares(ds: xr.Dataset):
    """Stacked bars: the share of each class's filters (largest k) owned by each branch."""
    k = int(ds.k.max())
    fig, (ax,) = new_figure("branch-share", f"Owner of each class's {k} filters", 1, max_cols=1)
    share = ds.branch_share.sel(k=k).values  # [cls, owner]
    bottom = np.zeros(len(share))
    for o, owner in enumerate(ds.owner.values):
        ax.bar(np.arange(len(share)), share[:, o], bottom=bottom, label=str(owner))
        bottom += share[:, o]
    ax.set_xticks(np.arange(len(share)), [str(c) for c in ds.class_name.values], fontsize=7, rotation=90)
    ax.set_ylabel("share of filters [1]", fontsize=8)
    if len(ds.owner) <= 16:
        ax.legend(fontsize=6, ncol=2)
    return fig


def decomposed_accuracy(ds: xr.Dataset):
    """Accuracy of the head restricted to each class's k filters, against k, and with every feature."""
    fig, (ax,) = new_figure("decomposed", "Decomposed head: accuracy with only each class's k filters", 1,
                            max_cols=1)
    ordered = ds.decomposed_accuracy.sortby("k")
    ax.plot(ordered.k.values, ordered.values, marker="o", label="class filters only")
    if "finetuned_accuracy" in ds:
        tuned = ds.finetuned_accuracy.sortby("k")
        ax.plot(tuned.k.values, tuned.values, marker="s", label="fine-tuned (cross-fitted)")
    ax.axhline(float(ds.attrs["full_accuracy"]), color="k", linestyle="--", linewidth=0.8, label="every feature")
    ax.axhline(1 / len(ds.cls), color="grey", linestyle=":", linewidth=0.8, label="chance")
    ax.set_xscale("log")
    ax.set_xlabel("k [features]", fontsize=8)
    ax.set_ylabel("accuracy [1]", fontsize=8)
    ax.legend(fontsize=7)
    return fig


def plot_class_filters(ds: xr.Dataset) -> list:
    figures = [frequency_heatmap(ds), psi_curves(ds), branch_shares(ds)]
    return figures + [decomposed_accuracy(ds)] if "decomposed_accuracy" in ds else figures
