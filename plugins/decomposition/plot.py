"""Figures of a ``decomposition`` node: the paper's grids (Figs. 10, 11, 18) and the energy shares."""

from __future__ import annotations

import numpy as np
import xarray as xr

from probekit.api import branch_ticks, new_figure

MAX_SAMPLES = 8


def stretched(image: np.ndarray) -> np.ndarray:
    """``[C, H, W]`` -> ``[H, W, C]`` min-max stretched to [0, 1] ("increased contrast")."""
    low, high = float(image.min()), float(image.max())
    return ((image - low) / (high - low) if high > low else np.zeros_like(image)).transpose(1, 2, 0)


def clipped(image: np.ndarray) -> np.ndarray:
    """``[C, H, W]`` image units -> ``[H, W, C]`` clipped to [0, 1] (no amplification)."""
    return np.clip(image, 0, 1).transpose(1, 2, 0)


def _grid(ds: xr.Dataset, label: str, title: str, columns: list[tuple[str, callable]]):
    samples = min(MAX_SAMPLES, ds.sizes["sample"])
    fig, axes = new_figure(label, title, samples * len(columns), panel_size=(0.95, 1.05), max_cols=len(columns))
    for row in range(samples):
        for col, (name, draw) in enumerate(columns):
            ax = axes[row * len(columns) + col]
            ax.imshow(draw(row), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=7)
            if col == 0:
                ax.set_ylabel(str(ds.sample_id.values[row])[-14:], fontsize=5)
    return fig


def components_grid(ds: xr.Dataset):
    """Per sample: input, R, every component with increased contrast, the output."""
    k = ds.sizes["branch"]
    parts = ds.component.isel(sample=slice(0, MAX_SAMPLES)).values
    columns = [("input", lambda r: clipped(ds.input.values[r]))] if "input" in ds else []
    columns += [("R", lambda r: clipped(ds.residual.values[r]))]
    columns += [(f"v{j}", lambda r, j=j: stretched(parts[r, j])) for j in range(k)]
    columns += [("output", lambda r: clipped(ds.output.values[r]))]
    return _grid(ds, "components", "Input, R, the branch components (contrast stretched per image) and the "
                 "output", columns)


def added_grid(ds: xr.Dataset):
    """Per sample: the output plus each component, unamplified, to show its role."""
    parts = ds.component.isel(sample=slice(0, MAX_SAMPLES)).values
    outputs = ds.output.isel(sample=slice(0, MAX_SAMPLES)).values
    columns = [(f"out+v{j}", lambda r, j=j: clipped(outputs[r] + parts[r, j])) for j in range(ds.sizes["branch"])]
    return _grid(ds, "added", "Each component added (without amplification) to the output", columns)


def energy(ds: xr.Dataset):
    """Energy share per branch and the mean component correlation matrix."""
    fig, (left, right) = new_figure("energy", f"Component energy shares; mean |correlation| "
                                    f"{float(ds.mean_abs_correlation):.3f}", 2)
    names = [str(b) for b in ds.branch.values]
    left.bar(np.arange(len(names)), ds.energy_share.values,
             color=["tab:blue" if a == 1 else "tab:gray" for a in ds.active.values])
    left.axhline(float(ds.attrs["energy_floor"]), color="black", linestyle="--", linewidth=0.8)
    left.set_ylabel("share of component energy [1]")
    branch_ticks(left, "x", names)
    image = right.imshow(ds.correlation.values, cmap="RdBu_r", vmin=-1, vmax=1)
    fig.colorbar(image, ax=right, label="correlation [1]")
    branch_ticks(right, "x", names)
    branch_ticks(right, "y", names)
    return fig


def plot_decomposition(ds: xr.Dataset) -> list:
    figures = [energy(ds)]
    if "component" in ds:
        figures += [components_grid(ds), added_grid(ds)]
    return figures
