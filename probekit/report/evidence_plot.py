"""The report's evidence figures, drawn for any node that follows the schema's evidence convention.

For every statistic ``S`` stored with ``S_ci`` or ``S_null``: the estimate with its interval, the null's band
(``S_null_band``, else its mean) in grey, and each entry marked filled when its adjusted p (``S_p_adjusted``,
else ``S_p``) is below :data:`probekit.stats.evidence.SIGNIFICANCE`, hollow when it is not. On a combined tree
(several runs along a dimension such as ``seed``) every run's estimate is drawn as a dot, with their mean.
"""

from __future__ import annotations

import itertools

import numpy as np
import xarray as xr

from probekit.report.plotting import MAX_PANELS, axis_label, new_figure
from probekit.stats.evidence import SIGNIFICANCE

MAX_ENTRIES = 40  # entries drawn per panel


def evidence_names(ds: xr.Dataset) -> list[str]:
    """The statistics of ``ds`` that carry evidence (an interval or a null)."""
    return [name for name in ds.data_vars
            if any(f"{name}_{suffix}" in ds for suffix in ("ci", "null")) and not name.endswith(("_p", "_null"))]


def _p_of(ds: xr.Dataset, name: str) -> xr.DataArray | None:
    for key in (f"{name}_p_adjusted", f"{name}_p"):
        if key in ds:
            return ds[key]
    return None


def _panels(var: xr.DataArray, along: str | None) -> tuple[str | None, list[dict]]:
    """The dim drawn along x (the longest), and one selection per panel over the other dims."""
    dims = [d for d in var.dims if d not in ("bound", along)]
    if not dims:
        return None, [{}]
    entry = max(dims, key=lambda d: var.sizes[d])
    others = [d for d in dims if d != entry]
    combos = itertools.product(*(range(var.sizes[d]) for d in others))
    return entry, [dict(zip(others, combo, strict=True)) for combo in combos]


def _labels(ds: xr.Dataset, dim: str | None, count: int) -> list[str]:
    if dim is None:
        return [""]
    values = ds[dim].values if dim in ds.coords else np.arange(count)
    if f"{dim}_name" in ds.coords:
        values = ds[f"{dim}_name"].values
    elif dim == "cls" and "class_name" in ds.coords:
        values = ds.class_name.values
    return [str(v) for v in values][:count]


def _panel(ax, ds: xr.Dataset, name: str, where: dict, entry: str | None, along: str | None) -> None:
    """One panel: entries along x, the statistic with its interval, the null band, significance markers."""
    pick = lambda var: var.isel({k: v for k, v in where.items() if k in var.dims})  # noqa: E731
    value = pick(ds[name])
    n = min(value.sizes.get(entry, 1), MAX_ENTRIES)
    x = np.arange(n)
    cut = (lambda v: v.isel({entry: slice(0, n)})) if entry else (lambda v: v)  # noqa: E731
    if f"{name}_null_band" in ds:
        band = cut(pick(ds[f"{name}_null_band"]))
        band = band.mean(along) if along in band.dims else band
        ax.bar(x, (band.sel(bound="high") - band.sel(bound="low")).values.reshape(-1),
               bottom=band.sel(bound="low").values.reshape(-1), width=0.8, color="0.85", label="null, central 95%")
    elif f"{name}_null" in ds:
        null = cut(pick(ds[f"{name}_null"]))
        null = null.mean(along) if along in null.dims else null
        ax.scatter(x, null.values.reshape(-1), marker="_", s=120, color="0.5", label="null mean")
    p = _p_of(ds, name)
    significant = None if p is None else (cut(pick(p)) < SIGNIFICANCE)
    if along in value.dims:  # a combined tree: one dot per run, and their mean
        for member in range(value.sizes[along]):
            ax.scatter(x, cut(value.isel({along: member})).values.reshape(-1), s=10, color="C0", alpha=0.6)
        mean = cut(value).mean(along).values.reshape(-1)
        ax.scatter(x, mean, marker="D", s=24, color="C3", label=f"mean over {value.sizes[along]} {along}s")
        if significant is not None:
            count = significant.sum(along).values.reshape(-1)
            for xi, yi, k in zip(x, mean, count, strict=True):
                ax.annotate(f"{int(k)}/{value.sizes[along]}", (xi, yi), fontsize=6, xytext=(2, 4),
                            textcoords="offset points")
    else:
        y = cut(value).values.reshape(-1)
        if f"{name}_ci" in ds:
            ci = cut(pick(ds[f"{name}_ci"]))
            low, high = ci.sel(bound="low").values.reshape(-1), ci.sel(bound="high").values.reshape(-1)
            ax.errorbar(x, y, yerr=np.abs(np.stack([y - low, high - y])), fmt="none", ecolor="C0", elinewidth=1)
        filled = np.ones(n, dtype=bool) if significant is None else significant.values.reshape(-1)
        ax.scatter(x[filled], y[filled], color="C0", s=18, label="beyond the null" if p is not None else None)
        ax.scatter(x[~filled], y[~filled], facecolors="white", edgecolors="C0", s=18, label="n.s.")
    labels = _labels(ds, entry, n)
    ax.set_xticks(x, labels if len(labels) <= MAX_ENTRIES else [], rotation=90, fontsize=6)
    label = axis_label(ds[name])
    ax.set_ylabel(label if len(label) <= 40 else name, fontsize=7)
    ax.set_title(", ".join(f"{k} {_labels(ds, k, ds.sizes[k])[v]}" for k, v in where.items()) or name, fontsize=8)


def plot_evidence(ds: xr.Dataset, node: str, along: str | None = None) -> list:
    """One figure per statistic with evidence in ``ds`` (the node ``node``); ``along``: the combined dimension."""
    figures = []
    for name in evidence_names(ds):
        entry, panels = _panels(ds[name], along)
        shown = panels[:MAX_PANELS]
        p = _p_of(ds, name)
        rule = (f"filled: {p.name.removeprefix(name + '_')} < {SIGNIFICANCE}" if p is not None else "no test") + (
            f"; first {MAX_PANELS} of {len(panels)} panels" if len(panels) > MAX_PANELS else "")
        fig, axes = new_figure(f"evidence-{name}", f"{node}: {name} with its interval and null ({rule})",
                               len(shown), panel_size=(max(3.4, 0.16 * min(ds[name].sizes.get(entry, 1), MAX_ENTRIES)),
                                                       2.8))
        for ax, where in zip(axes, shown, strict=True):
            _panel(ax, ds, name, where, entry, along)
        axes[0].legend(fontsize=6, loc="best")
        figures.append(fig)
    return figures
