"""Figures of a ``branch-count`` node (paper Fig. 5 left, Fig. 17 left); a built-in plugin of the core."""

from __future__ import annotations

import numpy as np



def counts_against_m(ds):
    """Active and silent branch counts against M, both axes log2 (Fig. 5 left)."""
    from probekit.report.plotting import new_figure

    fig, (ax,) = new_figure("counts", "Active and silent branches against M (10% rule)", 1, panel_size=(7.0, 3.6))
    m = ds.n_branches.values
    ax.plot(m, ds.n_active.values, "o-", label="active")
    silent = ds.n_silent.values
    shown = silent > 0  # log axis: a count of 0 has no point
    ax.plot(m[shown], silent[shown], "s-", label="silent (0 not drawn)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xticks(m, [str(v) for v in m])
    ax.set_xlabel("number of branches M")
    ax.set_ylabel("branches")
    ax.legend(fontsize=8)
    return fig


def relative_norms(ds):
    """Each model's branch norms relative to its largest, sorted (Fig. 17 left)."""
    from probekit.report.plotting import new_figure

    fig, (ax,) = new_figure("norms", "Branch response norms relative to the largest, per M (sorted)", 1,
                            panel_size=(7.0, 3.6))
    for m, row in zip(ds.n_branches.values, ds.relative_norm.values, strict=True):
        values = np.sort(row[:m])[::-1]
        ax.plot(np.arange(1, m + 1), values, "o-", markersize=3, label=f"M = {m}")
    ax.axhline(ds.attrs["threshold"], color="grey", linestyle=":", label="active threshold")
    ax.set_xlabel("branch rank")
    ax.set_ylabel("relative norm [1]")
    ax.legend(fontsize=8)
    return fig


def plot_branch_count(node):
    """The figures of a ``branch-count`` node."""
    return [counts_against_m(node), relative_norms(node)]
