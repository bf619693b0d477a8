"""Figures of a ``toy-sweep`` node (paper Figs. 2, 3 and 4); a built-in plugin of the core."""

from __future__ import annotations

import numpy as np


EXAMPLE_M = 10  # Fig. 3 right shows covariance matrices of M = 10 networks
EXAMPLES = 10
TRACED_PANELS = 4


def success_rate(ds):
    """Success rate against M with 95% Wilson intervals (Fig. 3 left)."""
    from probekit.report.plotting import axis_label, new_figure

    fig, (ax,) = new_figure("success", "Training success rate against the number of branches M", 1,
                            panel_size=(7.0, 3.6))
    m = ds.n_branches.values
    rate = ds.success_rate.values
    ax.errorbar(m, rate, yerr=[rate - ds.success_rate_low.values, ds.success_rate_high.values - rate],
                fmt="o-", capsize=3, label=f"{ds.sizes['trial']} trials per M, 95% Wilson interval")
    ax.set_xlabel("number of branches M")
    ax.set_ylabel(axis_label(ds.success_rate))
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def active_counts(ds):
    """Mean active and silent branches against M (Fig. 4 right)."""
    from probekit.report.plotting import new_figure

    fig, (ax,) = new_figure("active", "Mean active and silent branches against M (10% rule)", 1,
                            panel_size=(7.0, 3.6))
    m = ds.n_branches.values
    ax.plot(m, ds.mean_active.values, "o-", label="active")
    ax.plot(m, ds.mean_silent.values, "s-", label="silent")
    ax.set_xlabel("number of branches M")
    ax.set_ylabel(f"mean count [{ds.mean_active.attrs.get('units', 'branches')}]")
    ax.legend(fontsize=8)
    return fig


def example_covariances(ds):
    """F F^T of the first trials at M = 10, or the swept M closest to it (Fig. 3 right)."""
    from probekit.report.plotting import axis_label, new_figure

    m = int(ds.n_branches.values[np.argmin(np.abs(ds.n_branches.values - EXAMPLE_M))])
    shown = min(EXAMPLES, ds.sizes["trial"])
    fig, axes = new_figure("covariances", f"Response covariance F F^T of {shown} trained networks with M = {m}",
                           shown, panel_size=(2.6, 2.3), max_cols=5)
    cov = ds.cov.sel(n_branches=m).isel(trial=slice(0, shown), branch=slice(0, m), branch_other=slice(0, m))
    values = cov.values
    limit = float(np.nanmax(np.abs(values))) or 1.0
    for trial, ax in enumerate(axes):
        image = ax.imshow(values[trial], cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_title(f"trial {trial}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes, label=axis_label(ds.cov), shrink=0.8)
    return fig


def dynamics(ds):
    """Branch responses over training for a few traced trials of the smallest M (Fig. 2)."""
    from probekit.report.plotting import axis_label, new_figure

    m = int(ds.n_branches.values[0])
    traced = min(TRACED_PANELS, ds.sizes["traced_trial"])
    fig, axes = new_figure("dynamics", f"Branch responses during training, M = {m} (colour: input x_j; "
                           "line style: branch)", traced, panel_size=(4.2, 3.2), max_cols=2)
    trajectory = ds.trajectory.sel(n_branches=m).isel(branch=slice(0, m)).values  # [traced, step, branch, sample]
    steps, xs = ds.step.values, ds.x.values
    styles = ["-", "--", ":", "-."]
    colors = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a"]
    for trial, ax in enumerate(axes):
        for k in range(m):
            for j in range(len(xs)):
                ax.plot(steps, trajectory[trial, :, k, j], styles[k % len(styles)], color=colors[j % len(colors)],
                        linewidth=1.2, label=f"x={xs[j]:g}" if k == 0 else None)
        ax.set_title(f"trial {trial}", fontsize=9)
        ax.set_xlabel("gradient-descent step")
        ax.set_ylabel(axis_label(ds.trajectory), fontsize=8)
        if trial == 0:
            ax.legend(fontsize=7)
    return fig


def plot_toy_sweep(node):
    """The figures of a ``toy-sweep`` node."""
    figures = [success_rate(node), active_counts(node), example_covariances(node)]
    if "trajectory" in node:
        figures.append(dynamics(node))
    return figures
