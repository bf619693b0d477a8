"""``activity``: which branches are active and which are silent (paper section 4, Figs. 4 and 6).

A branch's response norm is the L2 norm of everything it outputs over the
probed samples. It is *active* when that norm is at least ``threshold``
(default 10%) of the largest norm among the branches of its layer, and
*silent* otherwise.

On gated layers (mixtures of experts) the response is the gated contribution ``g_k e_k``, so an expert the
router never picks is silent, and the node adds the routing statistics: each expert's mean gate value
(``routing_share``, summing to 1 over a layer's experts), the share of samples routed to it, both per class, and
each gated layer's ``dispatch_entropy`` and, with class labels, ``class_dispatch_entropy`` (``H(class | expert)``,
Chen et al. 2022's dispatch entropy with the classes as the clusters).

Evidence (:mod:`probekit_plugins.activity.evidence`): ``relative_norm_ci`` bootstraps the samples, and
``active_confident`` calls a branch active or silent only when the whole interval is on one side of the
threshold; ``norm_share_p`` tests whether a branch's share of its layer's summed norms is below what exchanging
the branches of the layer within every sample gives; ``dispatch_entropy_p`` whether routing is less balanced
than random routing at the same per-sample load; ``class_dispatch_entropy_p`` whether the experts' traffic is
more class-specific than with the classes shuffled over the samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import xarray as xr

from probekit.api import (active_flags, add_evidence, add_interval, Analysis, analysis_hooks, Batch, branch_coords,
                          class_coords, count_flags, describe_count, describe_p, evidence_rng, EvidenceOptions,
                          layer_coords, ProbekitError, relative_norms, sample_coords, SIGNIFICANCE)
from probekit_plugins.activity import evidence

EXCHANGE = "the responses of the branches of each layer exchanged independently within every sample"
ROUTING = "each sample's gate values assigned to the layer's experts at random (random routing at the same load)"


@dataclass
class ActivityOptions(EvidenceOptions):
    """``threshold``: active when norm >= threshold x the layer's largest norm; and the evidence's options
    (:class:`probekit.api.EvidenceOptions`)."""

    threshold: float = field(default=0.1, metadata={"help": "active when norm >= threshold x the layer's largest"})

    def check(self):
        super().check()
        if not 0 <= self.threshold <= 1:
            raise ProbekitError(f"activity.threshold must be in [0, 1], not {self.threshold}")


class Activity(Analysis):
    name = "activity"
    plot = "probekit_plugins.activity.plot:plot_activity"
    merge_rules = {"total_sq": "sum", "class_sq": "sum", "targets": "rows", "gate_sum": "sum", "routed": "sum",
                   "class_gate_sum": "sum", "class_count": "sum", "token_gate_sum": "sum"}
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
        self.routed = torch.zeros(b, dtype=torch.float64, device=context.device)  # samples with g_k(x) > 0 (of
        # token-routed experts: the share of each sample's tokens routed to the expert, summed over samples)
        self.token_gate_sum: torch.Tensor | None = None  # [T, B] sum over samples of each position's gate values
        self.class_gate_sum = torch.zeros(n_classes, b, dtype=torch.float64, device=context.device)
        self.class_count = torch.zeros(n_classes, dtype=torch.float64, device=context.device)
        self.sample_gate = context.sample_array(self.name, "gate", ("sample", "branch"), (b,), np.float32, {
            "long_name": "gate value g_k(x) per sample", "units": "1",
            "description": "0 on branches without a gate"}) if self.gated else None

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
        if self.gated:
            per_sample = torch.zeros_like(squares, dtype=torch.float32)
            for name, branches in self.gated:
                per_sample[:, branches] = batch.gates[name].float()
            self.sample_gate.write(start, per_sample.cpu().numpy())
        for name, branches in self.gated:
            gates = batch.gates[name].double()  # [N, K]
            self.gate_sum[branches] += gates.sum(0)
            if name in batch.token_gates:
                self._add_tokens(batch.token_gates[name].double(), branches)
            else:
                self.routed[branches] += (gates > 0).sum(0)
            if batch.targets is not None and len(self.class_sq):
                self.class_gate_sum[:, branches] += torch.zeros_like(self.class_gate_sum[:, branches]).index_add_(
                    0, batch.targets.long(), gates)

    def _add_tokens(self, gates: torch.Tensor, branches: slice) -> None:
        """Token-routed experts: routing per token, ``gates`` ``[N, T, K]``."""
        self.routed[branches] += (gates > 0).double().mean(1).sum(0)
        if self.token_gate_sum is None:
            self.token_gate_sum = gates.new_zeros(gates.shape[1], len(self.context.branchset))
        if self.token_gate_sum.shape[0] == gates.shape[1]:  # (sequences of one length: packed or padded text)
            self.token_gate_sum[:, branches] += gates.sum(0)

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
        ds = self._with_evidence(ds)
        if len(self.class_sq):
            count = self.class_count.cpu().numpy()
            class_sq = np.where(count[:, None] > 0, self.class_sq.cpu().numpy(), np.nan)  # unseen: unknown
            ds = ds.assign_coords(class_coords(ctx)).assign(
                class_norm=(("cls", "branch"), np.sqrt(class_sq), {
                    "long_name": "branch response norm per class", "units": "output units",
                    "description": "NaN for a class without probed samples"}),
                class_active=(("cls", "branch"), active_flags(self._relative(class_sq), self.options.threshold), {
                    "long_name": "active branch per class",
                    "description": "1/0/NaN: active, silent or unknown within the class by the same rule (NaN "
                                   "for a class without probed samples)"}),
                class_count=("cls", count.astype(np.int64), {"long_name": "probed samples per class",
                                                             "units": "samples"}),
            )
        return self._with_routing(ds) if self.gated else ds

    def _with_evidence(self, ds: xr.Dataset) -> xr.Dataset:
        """The norm shares with their branch-exchange test and interval, the relative norms' intervals, and the
        call those allow (both from the per-sample norms)."""
        o, parts = self.options, [part for _, part in self.context.branchset.layer_slices()]
        self.sample_norm.checkpoint()
        norms = self.sample_norm.read(0, self.context.n_samples)
        found = evidence.norm_evidence(norms, parts, o.permutations, o.resamples, o.level,
                                       evidence_rng(self.context.seed, self.name))
        ds["norm_share"] = ("branch", found["share"]["observed"], {
            "long_name": "share of the layer's summed norms", "units": "1",
            "description": "norm / the sum of the norms of the layer's branches (1 / K when all are equal)"})
        ds = add_evidence(ds, "norm_share", ("branch",), found["share"], o, permuted=EXCHANGE, alternative="less")
        if o.resamples:
            ds = add_interval(ds, "relative_norm", ("branch",), found["relative"]["ci"], level=o.level,
                              resamples=o.resamples)
            low, high = found["relative"]["ci"][:, 0], found["relative"]["ci"][:, 1]
            call = np.where(low >= o.threshold, 1.0, np.where(high < o.threshold, 0.0, np.nan))
            ds["active_confident"] = ("branch", call, {
                "long_name": "active branch, called with its interval",
                "description": f"1 when the whole {o.level:.0%} interval of relative_norm is >= {o.threshold}, 0 when "
                               "it is wholly below, NaN when it straddles the threshold (undecided)"})
        return ds

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
                "description": "share of probed samples with g_k(x) > 0 (token-routed experts: share of the tokens "
                               "routed to the expert, averaged over samples); NaN on branches without a gate"}))
        if self.token_gate_sum is not None:
            per_token = self.token_gate_sum.cpu().numpy() / max(n, 1)
            ds = ds.assign(token_routing_share=(("token", "branch"), np.where(gated, per_token, np.nan), {
                "long_name": "routing share per token position", "units": "1",
                "description": "mean gate value of the expert at each token position over the probed sequences "
                               "(token-routed experts); NaN on other branches"}))
        if len(self.class_sq):
            count = self.class_count.cpu().numpy()[:, None]
            per_class = np.divide(self.class_gate_sum.cpu().numpy(), count, out=np.full(self.class_sq.shape, np.nan),
                                  where=count > 0)
            ds = ds.assign(class_routing_share=(("cls", "branch"), np.where(gated, per_class, np.nan), {
                "long_name": "routing share per class", "units": "1",
                "description": "mean gate value over the class's samples; NaN on branches without a gate"}))
        return self._with_dispatch_entropy(ds)

    def _with_dispatch_entropy(self, ds: xr.Dataset) -> xr.Dataset:
        """Each gated layer's dispatch entropy with its random-routing null and interval (NaN on other layers)."""
        o, names = self.options, [layer.name for layer in self.context.branchset.layers]
        self.sample_gate.checkpoint()
        gates = self.sample_gate.read(0, self.context.n_samples).astype(np.float64)
        rng = evidence_rng(self.context.seed, f"{self.name}.routing")
        per_layer = self._per_gated_layer(gates, names, lambda g: evidence.routing_evidence(
            g, o.permutations, o.resamples, o.level, rng))
        ds = ds.assign(dispatch_entropy=("layer", per_layer["observed"], {
            "long_name": "dispatch entropy", "units": "1",
            "description": "entropy of the layer's expert load (share of the summed gate values) / log K: 1 balanced, "
                           "0 one expert; NaN on layers without a gate"}))
        ds = add_evidence(ds, "dispatch_entropy", ("layer",), per_layer, o, permuted=ROUTING, alternative="less")
        return self._with_class_dispatch_entropy(ds, gates, names)

    def _per_gated_layer(self, gates: np.ndarray, names: list[str], evidence_of) -> dict[str, np.ndarray]:
        """``evidence_of(gates [N, K])`` (:func:`probekit.api.permutation_evidence`'s dict) of every gated layer,
        as ``[L]`` (``[L, 2]`` for band and ci) arrays over all layers, NaN on layers without a gate."""
        per_layer = {key: np.full((len(names), 2) if key in ("band", "ci") else len(names), np.nan)
                     for key in ("observed", "p", "null", "band", "ci")}
        for name, branches in self.gated:
            for key, value in evidence_of(gates[:, branches]).items():
                per_layer[key][names.index(name)] = value
        return per_layer

    def _with_class_dispatch_entropy(self, ds: xr.Dataset, gates: np.ndarray, names: list[str]) -> xr.Dataset:
        """Each gated layer's H(class | expert) against the classes shuffled over the samples (with class labels)."""
        if self.targets is None or not len(self.class_sq):
            return ds
        o, n_classes = self.options, len(self.class_sq)
        labels = self.targets[:self.context.n_samples].astype(np.int64)
        rng = evidence_rng(self.context.seed, f"{self.name}.class-routing")
        per_layer = self._per_gated_layer(gates, names, lambda g: evidence.class_routing_evidence(
            g, labels, n_classes, o.permutations, o.resamples, o.level, rng))
        ds = ds.assign(class_dispatch_entropy=("layer", per_layer["observed"], {
            "long_name": "class dispatch entropy H(class | expert)", "units": "nat",
            "description": "-sum_m (n_m/n) sum_c (n_cm/n_m) log(n_cm/n_m), n_cm the class-c samples whose largest "
                           "gate is expert m: 0 when each expert receives one class; NaN on layers without a gate"}))
        return add_evidence(ds, "class_dispatch_entropy", ("layer",), per_layer, o,
                            permuted="the class labels shuffled over the samples", alternative="less")

    def summary(self, ds: xr.Dataset) -> dict:
        return {
            f"active/total in {layer}": describe_count(float(ds.active_count.sel(layer=layer)),
                                                       int((ds.branch_layer == layer).sum()))
            for layer in ds.layer.values[:8]
        } | ({"layers": f"{len(ds.layer)} (the first 8 shown above; all are in the node)"} if len(ds.layer) > 8 else {}
             ) | _evidence_summary(ds) | (_routing_summary(ds) if "routing_share" in ds else {})


def _evidence_summary(ds: xr.Dataset) -> dict:
    """How many calls the intervals allow, and how many branches are weaker than branch exchange gives."""
    out = {}
    if "active_confident" in ds:
        call = ds.active_confident.values
        out[f"called with {ds.relative_norm_ci.attrs['level']:.0%} intervals"] = (
            f"{int((call == 1).sum())} active, {int((call == 0).sum())} silent, {int(np.isnan(call).sum())} undecided")
    if "norm_share_p_adjusted" in ds:
        weak = ds.norm_share_p_adjusted.values < SIGNIFICANCE
        out["branches weaker than branch exchange gives"] = (
            f"{int(weak.sum())} of {len(weak)} ({ds.norm_share_p_adjusted.attrs['correction']}-adjusted "
            f"p < {SIGNIFICANCE})")
    if "dispatch_entropy_p_adjusted" in ds:
        for layer, value, p in zip(ds.layer.values, ds.dispatch_entropy.values, ds.dispatch_entropy_p_adjusted.values,
                                   strict=True):
            if np.isfinite(value):
                out[f"dispatch entropy in {layer}"] = f"{value:.3f}, less balanced than random routing: {describe_p(p)}"
    if "class_dispatch_entropy_p_adjusted" in ds:
        for layer, value, p in zip(ds.layer.values, ds.class_dispatch_entropy.values,
                                   ds.class_dispatch_entropy_p_adjusted.values, strict=True):
            if np.isfinite(value):
                out[f"H(class | expert) in {layer}"] = (f"{value:.3f} nats, more class-specific than shuffled "
                                                        f"classes: {describe_p(p)}")
    return dict(list(out.items())[:12])


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
