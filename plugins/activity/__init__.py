"""``activity``: which branches are active and which are silent (paper section 4, Figs. 4 and 6).

A branch's response norm is the L2 norm of everything it outputs over the
probed samples. It is *active* when that norm is at least ``threshold``
(default 10%) of the largest norm among the branches of its layer, and
*silent* otherwise.

On gated layers (mixtures of experts) the response is the gated contribution ``g_k e_k``, so an expert the
router never picks is silent, and the node adds the routing statistics: each expert's mean gate value
(``routing_share``, summing to 1 over a layer's experts), the share of samples routed to it, and both per class.
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
    merge_rules = {"total_sq": "sum", "class_sq": "sum", "targets": "rows", "gate_sum": "sum", "routed": "sum",
                   "class_gate_sum": "sum", "class_count": "sum"}
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
        self.gated = [(layer.name, branches) for layer, branches in context.branchset.layer_slices() if layer.gated]
        self.gate_sum = torch.zeros(b, dtype=torch.float64, device=context.device)  # sum over samples of g_k(x)
        self.routed = torch.zeros(b, dtype=torch.float64, device=context.device)  # samples with g_k(x) > 0
        self.class_gate_sum = torch.zeros(n_classes, b, dtype=torch.float64, device=context.device)
        self.class_count = torch.zeros(n_classes, dtype=torch.float64, device=context.device)

    def update(self, batch: Batch) -> None:
        squares = torch.cat([r.pow(2).sum(dim=2) for r in batch.responses.values()], dim=1)  # [N, B]
        start = int(batch.index[0])
        self.sample_norm.write(start, squares.sqrt().float().cpu().numpy())
        self.total_sq += squares.sum(0).double()
        if batch.targets is not None:
            self._record_targets(start, batch.targets)
            if len(self.class_sq):
                self.class_sq.index_add_(0, batch.targets.long(), squares.double())
                self.class_count.index_add_(0, batch.targets.long(),
                                            torch.ones_like(batch.targets, dtype=torch.float64))
        for name, branches in self.gated:
            gates = batch.gates[name].double()  # [N, K]
            self.gate_sum[branches] += gates.sum(0)
            self.routed[branches] += (gates > 0).sum(0)
            if batch.targets is not None and len(self.class_sq):
                self.class_gate_sum[:, branches] += torch.zeros_like(self.class_gate_sum[:, branches]).index_add_(
                    0, batch.targets.long(), gates)

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
        for _, branches in self.context.branchset.layer_slices():
            out[..., branches] = relative_norms(norm[..., branches])
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
        return self._with_routing(ds) if self.gated else ds

    def _with_routing(self, ds: xr.Dataset) -> xr.Dataset:
        """Routing statistics of the gated layers (NaN on the branches of other layers)."""
        n = self.context.n_samples
        gated = np.zeros(len(self.context.branchset), dtype=bool)
        for _, branches in self.gated:
            gated[branches] = True
        share = np.where(gated, self.gate_sum.cpu().numpy() / max(n, 1), np.nan)
        routed = np.where(gated, self.routed.cpu().numpy() / max(n, 1), np.nan)
        ds = ds.assign(
            routing_share=("branch", share, {
                "long_name": "routing share", "units": "1",
                "description": "mean gate value g_k(x) over the probed samples (sums to 1 over a layer's experts "
                               "when the gate is normalised); NaN on branches without a gate"}),
            routed_fraction=("branch", routed, {
                "long_name": "share of samples routed to the expert", "units": "1",
                "description": "share of probed samples with g_k(x) > 0; NaN on branches without a gate"}))
        if len(self.class_sq):
            count = self.class_count.cpu().numpy()[:, None]
            per_class = np.divide(self.class_gate_sum.cpu().numpy(), count, out=np.full(self.class_sq.shape, np.nan),
                                  where=count > 0)
            ds = ds.assign(class_routing_share=(("cls", "branch"), np.where(gated, per_class, np.nan), {
                "long_name": "routing share per class", "units": "1",
                "description": "mean gate value over the class's samples; NaN on branches without a gate"}))
        return ds

    def summary(self, ds: xr.Dataset) -> dict:
        return {
            f"active/total in {layer}": describe_count(float(ds.active_count.sel(layer=layer)),
                                                       int((ds.branch_layer == layer).sum()))
            for layer in ds.layer.values[:8]
        } | ({"layers": f"{len(ds.layer)} (the first 8 shown above; all are in the node)"} if len(ds.layer) > 8 else {}
             ) | (_routing_summary(ds) if "routing_share" in ds else {})


def _routing_summary(ds: xr.Dataset) -> dict:
    """The expert with the largest and smallest routing share of each gated layer (the first 8)."""
    out = {}
    for layer in dict.fromkeys(ds.branch_layer.values.tolist()):
        share = ds.routing_share.where(ds.branch_layer == layer, drop=True)
        if len(share) and np.isfinite(share.values).any():
            low, high = np.argsort(share.values)[[0, -1]]
            out[f"routing share in {layer}"] = (f"largest {share.branch.values[high]} {share.values[high]:.3f}, "
                                                f"smallest {share.branch.values[low]} {share.values[low]:.3f}")
    return dict(list(out.items())[:8])


probekit_register_analyses, probekit_plot = analysis_hooks(Activity)
