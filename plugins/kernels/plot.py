"""Figures of a ``kernels`` node: UMAP scatters coloured by branch, and the raw RGB first-layer kernels."""

from __future__ import annotations

import numpy as np
import xarray as xr

from probekit.api import describe_p, MAX_PANELS, new_figure, panel_caption

MAX_KERNELS_PER_ROW = 16
MAX_BRANCH_ROWS = 32


def scatter(ds: xr.Dataset, state: str):
    """One panel per layer: the kernels' UMAP embedding, coloured by branch, KMeans ARI and silhouette (with
    their permutation p-values) in the title."""
    layers = [str(layer) for layer in ds.layer.values]
    shown = layers[:MAX_PANELS]
    fig, axes = new_figure(f"umap-{state}", panel_caption(f"UMAP of the conv kernels ({state}), colour = branch",
                                                          len(layers)), len(shown), panel_size=(3.4, 3.2))
    for ax, layer in zip(axes, shown, strict=True):
        here = ds.kernel_layer.values == layer
        points = ds.embedding.sel(state=state).values[here]
        _, codes = np.unique([str(b) for b in ds.kernel_branch.values[here]], return_inverse=True)
        ax.scatter(points[:, 0], points[:, 1], c=codes, cmap="tab20" if codes.max() < 20 else "turbo", s=4,
                   linewidths=0)
        s = ds.score.sel(state=state, layer=layer, space="umap")
        ari, sil = (f"{float(s.sel(metric=m)):.3f} ({_verdict(ds, state, layer, m)})" for m in ("ari_kmeans",
                                                                                              "silhouette"))
        ax.set_title(f"{layer}\nARI {ari}, sil {sil}", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def _verdict(ds: xr.Dataset, state: str, layer: str, metric: str) -> str:
    """``n.s.`` or the adjusted p of one layer's score (``untested`` without permutations)."""
    if "score_p_adjusted" not in ds:
        return "untested"
    p = float(ds.score_p_adjusted.sel(state=state, layer=layer, space="umap", metric=metric))
    return describe_p(p)


def rgb_grid(ds: xr.Dataset, state: str):
    """The raw 3-channel kernels of the first layer as RGB patches, one row per branch."""
    branches = list(dict.fromkeys(str(b) for b in ds.rgb_kernel_branch.values))[:MAX_BRANCH_ROWS]
    weights = ds.rgb_kernel.sel(state=state).values
    columns = min(MAX_KERNELS_PER_ROW, max(int((ds.rgb_kernel_branch.values == b).sum()) for b in branches))
    fig, axes = new_figure(f"rgb-kernels-{state}", f"First-layer kernels ({state}), one row per branch",
                           len(branches) * columns, panel_size=(0.5, 0.55), max_cols=columns)
    scale = float(np.abs(weights).max()) or 1.0
    for row, branch in enumerate(branches):
        own = weights[ds.rgb_kernel_branch.values == branch][:columns]
        for col in range(columns):
            ax = axes[row * columns + col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(own):
                ax.set_axis_off()
                continue
            ax.imshow(0.5 + 0.5 * own[col].transpose(1, 2, 0) / scale, interpolation="nearest")
            if col == 0:
                ax.set_ylabel(str(branch), fontsize=5, rotation=0, ha="right")
    return fig


def plot_kernels(ds: xr.Dataset) -> list:
    states = [str(s) for s in ds.state.values]
    figures = [scatter(ds, s) for s in states]
    if "rgb_kernel" in ds:
        figures += [rgb_grid(ds, s) for s in states]
    return figures
