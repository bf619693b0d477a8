"""Figures of a ``hessian`` node: |H| with branch-block boundaries, init and trained side by side (paper Fig. 5)."""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.colors import LogNorm

from probekit.api import new_figure


def _boundaries(ds: xr.Dataset) -> np.ndarray:
    """Row indices where a new branch's block starts (after the first)."""
    branch = ds.param_branch.values
    return np.flatnonzero(branch[1:] != branch[:-1]) + 1


def magnitude(ds: xr.Dataset):
    """|H| on a log colour scale per state, block boundaries drawn, off-block energy share in the title."""
    states = list(ds.state.values)
    fig, axes = new_figure("magnitude", "|H| over the selected parameters; lines mark the branch blocks",
                           len(states), panel_size=(5.0, 4.4))
    edges = _boundaries(ds) - 0.5
    for ax, state in zip(axes, states, strict=True):
        h = np.abs(ds.hessian.sel(state=state).values)
        positive = h[h > 0]
        if positive.size:
            top = float(positive.max())
            image = ax.imshow(np.where(h > 0, h, np.nan), cmap="magma", interpolation="nearest",
                              norm=LogNorm(vmin=max(float(positive.min()), top * 1e-6), vmax=top))
            fig.colorbar(image, ax=ax, label="|H| [loss / parameter unit^2]")
        for edge in edges:
            ax.axhline(edge, color="cyan", linewidth=0.3)
            ax.axvline(edge, color="cyan", linewidth=0.3)
        ax.set_title(f"{state}: off-block energy share {_share_text(ds, state)}", fontsize=9)
        ax.set_xlabel("param_other")
        ax.set_ylabel("param")
    return fig


def _share_text(ds: xr.Dataset, state: str) -> str:
    """The state's off-block share (with its standard error when estimated) and the even-spread reference."""
    share = float(ds.off_block_share.sel(state=state))
    k = ds.sizes["branch"]
    se = f" +- {float(ds.off_block_share_se.sel(state=state)):.1g}" if "off_block_share_se" in ds else ""
    return f"{share:.4f}{se} (even spread: {(k - 1) / k:.2f})"


def block_energy(ds: xr.Dataset):
    """Frobenius norm of every branch block per state (log colour scale)."""
    states = list(ds.state.values)
    fig, axes = new_figure("blocks", "Frobenius norm of each branch block |H_kl|_F", len(states),
                           panel_size=(4.6, 4.0))
    for ax, state in zip(axes, states, strict=True):
        norms = ds.block_norm.sel(state=state).values
        positive = norms[norms > 0]
        norm = LogNorm(vmin=float(positive.min()), vmax=float(positive.max())) if positive.size else None
        image = ax.imshow(np.where(norms > 0, norms, np.nan), cmap="viridis", interpolation="nearest", norm=norm)
        ax.set_title(f"{state}: off-block energy share {_share_text(ds, state)}", fontsize=9)
        ax.set_xlabel("branch_other index")
        ax.set_ylabel("branch index")
        fig.colorbar(image, ax=ax, label="|H_kl|_F")
    return fig


def plot_hessian(ds: xr.Dataset) -> list:
    """|H| (exact mode only: an estimate stores no matrix) and the branch-block norms."""
    return ([magnitude(ds)] if "hessian" in ds else []) + [block_energy(ds)]
