"""Figures of the ``moe-synthetic`` and ``hessian-classes`` nodes (``docs/reproductions.md``)."""

from __future__ import annotations

import numpy as np


def off_block_against_classes(ds):
    """The off-block share against C (log axes), per state: seed mean, each seed a dot, random blocks a band."""
    from probekit.report.plotting import new_figure

    fig, (ax,) = new_figure("off-block", "Off-block share of the exact Hessian against the class count", 1,
                            panel_size=(7.0, 3.6))
    c = ds.classes.values
    for state, colour in zip(ds.state.values, ("tab:blue", "tab:orange"), strict=False):
        row = ds.sel(state=state)
        ax.plot(c, row.off_block_share.mean("seed").values, "o-", color=colour, label=f"branch blocks, {state}")
        for seed in row.seed.values:
            ax.plot(c, row.off_block_share.sel(seed=seed).values, ".", color=colour, alpha=0.5)
        band = row.off_block_share_null_band.mean("seed").values
        ax.fill_between(c, band[:, 0], band[:, 1], color=colour, alpha=0.2, label=f"random blocks, {state}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(c, [str(v) for v in c])
    ax.set_xlabel("classes C")
    ax.set_ylabel("|H - blockdiag(H)|_F^2 / |H|_F^2")
    ax.legend(fontsize=7)
    return fig


def plot_hessian_classes(node):
    """The figures of a ``hessian-classes`` node."""
    return [off_block_against_classes(node)]


def accuracy_and_entropy(ds):
    """Per model: test accuracy and dispatch entropy of each seed, beside the published mean and its sd."""
    from probekit.report.plotting import new_figure

    fig, (left, right) = new_figure("moe", "Mixtures of experts on clustered data: ours (dots) against the "
                                    "published mean +- sd (bars)", 2, panel_size=(4.2, 3.4))
    x = np.arange(len(ds.model))
    for axis, name, label in ((left, "accuracy", "test accuracy [1]"),
                              (right, "dispatch_entropy", "H(cluster | expert) [nat]")):
        for i, model in enumerate(ds.model.values):
            values = ds[name].sel(model=model).values
            axis.plot(np.full(len(values), i), values, "o", color="tab:blue", alpha=0.7)
            published = float(ds[f"published_{name}"].sel(model=model))
            sd = float(ds[f"published_{name}_sd"].sel(model=model))
            if np.isfinite(published):
                axis.errorbar(i + 0.2, published, yerr=sd if np.isfinite(sd) else None, fmt="s", color="k")
        if name == "dispatch_entropy":
            axis.axhline(float(np.nanmean(ds.dispatch_entropy_null.values)), color="grey", linestyle=":",
                         label="shuffled clusters")
            axis.legend(fontsize=7)
        axis.set_xticks(x, [str(m) for m in ds.model.values])
        axis.set_ylabel(label)
    return fig


def plot_moe_synthetic(node):
    """The figures of a ``moe-synthetic`` node."""
    return [accuracy_and_entropy(node)]
