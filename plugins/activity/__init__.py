"""``activity``: which branches are active and which are silent (paper section 4, Figs. 4 and 6).

A branch's response norm is the L2 norm of everything it outputs over the
probed samples. It is *active* when that norm is at least ``threshold``
(default 10%) of the largest norm among the branches of its layer, and
*silent* otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from probekit.api import (active_flags, Analysis, analysis_hooks, Batch, branch_coords, class_coords, count_flags,
                          describe_count, layer_coords, ProbekitError, relative_norms, sample_coords)


@dataclass
class ActivityOptions:
    """``threshold``: active when norm >= threshold x the layer's largest norm."""

    threshold: float = 0.1

    def check(self):
        if not 0 <= self.threshold <= 1:
            raise ProbekitError(f"activity.threshold must be in [0, 1], not {self.threshold}")


class Activity(Analysis):
    name = "activity"
    plot = "probekit_plugins.activity.plot:plot_activity"
    merge_rules = {"total_sq": "sum", "class_sq": "sum", "targets": "rows"}
    description = "per-branch response norms; active/silent by the paper's 10% rule"
    Options = ActivityOptions

    def __init__(self, context, options):
        super().__init__(context, options)
        b = len(context.branchset)
        self.sample_norm = context.sample_array(self.name, "response_norm", ("sample", "branch"), (b,), np.float32, {
            "long_name": "branch response norm per sample", "units": "output units",
            "description": "L2 norm of the branch's flattened response to one sample"})
        self.total_sq = torch.zeros(b, dtype=torch.float64, device=context.device)
        self.targets: np.ndarray | None = None  # [N], kept as the ``target`` coordinate
        n_classes = len(context.data.classes or [])
        self.class_sq = torch.zeros(n_classes, b, dtype=torch.float64, device=context.device)

    def update(self, batch: Batch) -> None:
        squares = torch.cat([r.pow(2).sum(dim=2) for r in batch.responses.values()], dim=1)  # [N, B]
        start = int(batch.index[0])
        self.sample_norm.write(start, squares.sqrt().float().cpu().numpy())
        self.total_sq += squares.sum(0).double()
        if batch.targets is not None:
            self._record_targets(start, batch.targets)
            if len(self.class_sq):
                self.class_sq.index_add_(0, batch.targets.long(), squares.double())

    def _record_targets(self, start: int, targets: torch.Tensor) -> None:
        values = targets.cpu().numpy()
        if self.targets is None:
            self.targets = np.zeros(self.context.n_samples, dtype=values.dtype)
        self.targets[start:start + len(values)] = values

    def _relative(self, sq: np.ndarray) -> np.ndarray:
        """Norms relative to the largest branch of the same layer; ``sq``: ``[..., B]`` squared norms. NaN for
        every branch of a layer with a NaN/Inf norm (see :mod:`probekit.measures.activity_rule`)."""
        norm = np.sqrt(sq)
        out = np.zeros_like(norm, dtype=np.float64)
        start = 0
        for layer in self.context.branchset.layers:
            stop = start + len(layer.branches)
            out[..., start:stop] = relative_norms(norm[..., start:stop])
            start = stop
        return out

    def finalize(self) -> xr.Dataset:
        ctx = self.context
        total_sq = self.total_sq.cpu().numpy()
        relative = self._relative(total_sq)
        active = active_flags(relative, self.options.threshold)
        layer_names = [layer.name for layer in ctx.branchset.layers]
        layer_of = np.array(ctx.branchset.layer_of_branch, dtype=object)
        counts = np.array([count_flags(active[layer_of == name]) for name in layer_names]).reshape(-1, 2)
        ds = xr.Dataset(
            {
                "norm": ("branch", np.sqrt(total_sq), {
                    "long_name": "branch response norm", "units": "output units",
                    "description": "L2 norm of the branch's responses over all probed samples"}),
                "relative_norm": ("branch", relative, {
                    "long_name": "norm relative to the layer's largest branch", "units": "1"}),
                "active": ("branch", active, {
                    "long_name": "active branch",
                    "description": f"1 when relative_norm >= {self.options.threshold} (paper Fig. 4 rule), 0 when "
                                   "silent, NaN when unknown (a NaN/Inf norm in the layer)"}),
                "active_count": ("layer", counts[:, 0], {"long_name": "active branches", "units": "branches",
                                                         "description": "NaN when any flag is unknown"}),
                "silent_count": ("layer", counts[:, 1], {"long_name": "silent branches", "units": "branches",
                                                         "description": "NaN when any flag is unknown"}),
            },
            coords={**branch_coords(ctx), **layer_coords(ctx), **sample_coords(ctx, self.targets)},
            attrs={"threshold": self.options.threshold},
        )
        if self.sample_norm.in_memory:
            ds[self.sample_norm.name] = (self.sample_norm.dims, self.sample_norm.values(), self.sample_norm.attrs)
        if len(self.class_sq):
            class_sq = self.class_sq.cpu().numpy()
            ds = ds.assign_coords(class_coords(ctx)).assign(
                class_norm=(("cls", "branch"), np.sqrt(class_sq), {
                    "long_name": "branch response norm per class", "units": "output units"}),
                class_active=(("cls", "branch"), active_flags(self._relative(class_sq), self.options.threshold), {
                    "long_name": "active branch per class",
                    "description": "1/0/NaN: active, silent or unknown within the class by the same rule"}),
            )
        return ds

    def summary(self, ds: xr.Dataset) -> dict:
        return {
            f"active/total in {layer}": describe_count(float(ds.active_count.sel(layer=layer)),
                                                       int((ds.branch_layer == layer).sum()))
            for layer in ds.layer.values[:8]
        } | ({"layers": f"{len(ds.layer)} (the first 8 shown above; all are in the node)"} if len(ds.layer) > 8 else {})


probekit_register_analyses, probekit_plot = analysis_hooks(Activity)
