"""``importance``: what each branch, head or expert does for the loss, by true ablation and by two first-order
estimates from one forward and backward pass.

* **Ablation** (``ablation_loss_change``, ``ablation_accuracy``): the model rerun with one branch's part
  (:func:`probekit.api.edit_branches`: a branch's output, a group's or tower's channels, a head's slice of the
  output projection's input, a routed expert's weighted output) replaced by zeros (``zero``), by its mean over
  the ablated samples (``mean``), or by the next sample's (``resample``), one pass per branch and ablation.
* **Attribution patching** (``estimate``): the same change to first order, ``dL/dpart . (replacement - part)``,
  from the one gated pass.
* **Gate-gradient importance** (``gate_importance``, Michel et al. 2019): ``I_k = E_x |dL/dxi_k|`` for a scalar
  gate ``xi_k = 1`` multiplying branch k's part, differentiated exactly by autograd; it needs no head mask from
  the model, so it works on any attention (grouped-query included) and on experts.

Per layer, ``spearman`` ranks the estimate against the ablation (with its p-value) and ``gate_spearman`` the gate
importance against the zero ablation; ``cost_seconds`` and ``cost_passes`` say what each way cost. The first
``max_samples`` samples are used (ablation costs one forward per branch and ablation per batch).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from probekit.api import (Analysis, analysis_hooks, Batch, branch_coords, layer_coords, ProbekitError, resolve_loss,
                          take_inputs, to_device)

from .passes import ABLATIONS, ablated_pass, correct, gated_pass, part_sums, per_sample_loss, replacement

WAYS = ("ablation", "estimate")  # the dim of the costs (not "method": DataArray.sel takes a method argument)


@dataclass
class ImportanceOptions:
    """``ablations``: which of zero, mean, resample; ``max_samples``: the first samples used (each batch costs one
    forward per branch and ablation); ``loss``: as the hessian's (auto: the model's own, else ce or mse)."""

    ablations: str = field(default="zero,mean,resample", metadata={"help": "comma-separated: zero, mean, resample"})
    max_samples: int = field(default=256, metadata={"help": "the first samples ablated and estimated"})
    loss: str = field(default="auto", metadata={"help": "auto, mse, ce, clamped, next-token, same-token"})

    def check(self):
        chosen = self.modes()
        if not chosen or any(mode not in ABLATIONS for mode in chosen):
            raise ProbekitError(f"importance.ablations must name some of {', '.join(ABLATIONS)}, not "
                                f"{self.ablations!r}")
        if self.max_samples < 1:
            raise ProbekitError(f"importance.max_samples must be >= 1, not {self.max_samples}")

    def modes(self) -> tuple[str, ...]:
        return tuple(mode.strip() for mode in self.ablations.split(",") if mode.strip())


class Importance(Analysis):
    name = "importance"
    plot = "probekit_plugins.importance.plot:plot_importance"
    description = "each branch's effect on the loss: true ablation, attribution patching, gate gradients"
    Options = ImportanceOptions
    needs_grad = True
    merge_rules = {"change": "sum", "change_sq": "sum", "right": "sum", "estimates": "sum", "gate_abs": "sum",
                   "clean": "sum", "clean_right": "sum", "count": "sum", "seconds": "sum", "passes": "sum"}

    def __init__(self, context, options):
        super().__init__(context, options)
        self.modes = options.modes()
        self.loss = resolve_loss(options.loss, context.model, bool(context.data.classes), self.name)
        self.layers = list(context.branchset.layers)
        self.branches = [(layer, k) for layer in self.layers for k in range(len(layer.branches))]  # branch order
        self.samples = min(options.max_samples, context.n_samples)
        b, m = len(context.branchset), len(self.modes)
        self.change, self.change_sq, self.right, self.estimates = (torch.zeros(b, m, dtype=torch.float64)
                                                                   for _ in range(4))
        self.gate_abs = torch.zeros(b, dtype=torch.float64)
        self.clean, self.clean_right, self.count = 0.0, 0.0, 0
        self.seconds, self.passes = np.zeros(2), np.zeros(2)
        self.scored = True  # whether the outputs are class scores (accuracy is defined)
        self.means = None

    def _mean_parts(self) -> dict:
        """Each branch's mean part over the ablated samples (one plain forward over them, before the first
        batch; every process of a data-parallel run computes the same)."""
        sums, start = {}, time.perf_counter()
        for _, x, _ in self.context.data.loader(self.context.batch_size or 64, self.samples):
            found = part_sums(self.context.model, self.layers, to_device(x, self.context.device))
            sums = {key: sums.get(key, 0) + value for key, value in found.items()}
            self.passes[0] += 1
        self.seconds[0] += time.perf_counter() - start
        return {key: value / self.samples for key, value in sums.items()}

    def update(self, batch: Batch) -> None:
        keep = int((batch.index < self.samples).sum())
        if keep == 0:
            return
        if self.means is None:
            self.means = self._mean_parts()
        inputs = take_inputs(batch.inputs, slice(0, keep))
        targets = None if batch.targets is None else batch.targets[:keep]
        model = self.context.model

        def losses_of(outputs):
            return per_sample_loss(self.loss, outputs, targets, inputs, self.name)

        start = time.perf_counter()
        clean, parts, grads, gate_grads = gated_pass(model, self.layers, inputs, losses_of)
        self._add_estimates(parts, grads, gate_grads)
        self.seconds[1] += time.perf_counter() - start
        self.passes[1] += 2  # one forward, one backward
        clean_right = correct(batch.outputs[:keep].detach(), targets)
        self.scored = self.scored and clean_right is not None
        self.clean += float(clean.sum())
        self.clean_right += float(clean_right.sum()) if clean_right is not None else 0.0
        self.count += keep
        start = time.perf_counter()
        self._ablate(inputs, targets, clean, losses_of)
        self.seconds[0] += time.perf_counter() - start

    def _add_estimates(self, parts: dict, grads: dict, gate_grads: torch.Tensor) -> None:
        """Attribution patching per branch and ablation, summed over samples, and sum |dL/dxi|."""
        for index, (layer, k) in enumerate(self.branches):
            part, grad = parts[layer.name, k], grads[layer.name, k]
            for m, mode in enumerate(self.modes):
                delta = replacement(mode, part, self.means[layer.name, k]) - part
                self.estimates[index, m] += float((grad.double() * delta.double()).sum())
        self.gate_abs += gate_grads.abs().sum(0).cpu()

    def _ablate(self, inputs, targets, clean: torch.Tensor, losses_of) -> None:
        """One forward per branch and ablation: the change in each sample's loss, and whether it is right."""
        bar = tqdm(total=len(self.branches) * len(self.modes), desc="importance ablations", unit="pass",
                   leave=False, disable=None)
        for index, (layer, k) in enumerate(self.branches):
            for m, mode in enumerate(self.modes):
                bar.update()
                outputs = ablated_pass(self.context.model, layer, k, mode, self.means, inputs)
                change = (losses_of(outputs) - clean).cpu()
                self.change[index, m] += float(change.sum())
                self.change_sq[index, m] += float((change * change).sum())
                right = correct(outputs, targets)
                self.right[index, m] += float(right.sum()) if right is not None else 0.0
                self.passes[0] += 1
        bar.close()

    def finalize(self) -> xr.Dataset:
        n = max(self.count, 1)
        change = self.change.numpy() / n
        se = np.sqrt(np.clip(self.change_sq.numpy() / n - change ** 2, 0, None) / max(n - 1, 1))
        estimate = self.estimates.numpy() / n
        gate = self.gate_abs.numpy() / n
        accuracy = self.right.numpy() / n if self.scored else np.full_like(change, np.nan)
        rho, p, gate_rho, gate_p = self._rank_agreement(change, estimate, gate)
        coords = {**branch_coords(self.context), **layer_coords(self.context),
                  "ablation": ("ablation", list(self.modes)), "way": ("way", list(WAYS))}
        per_sample = "mean over the ablated samples"
        return xr.Dataset({
            "ablation_loss_change": (("branch", "ablation"), change, {
                "long_name": "change in loss with the branch ablated", "units": "loss per sample",
                "description": f"{per_sample}; ablated minus intact"}),
            "ablation_loss_change_se": (("branch", "ablation"), se, {
                "long_name": "standard error of ablation_loss_change over samples", "units": "loss per sample"}),
            "ablation_accuracy": (("branch", "ablation"), accuracy, {
                "long_name": "accuracy with the branch ablated", "units": "1",
                "description": "arg-max class against the target; NaN when the outputs are not class scores"}),
            "estimate": (("branch", "ablation"), estimate, {
                "long_name": "attribution-patching estimate of ablation_loss_change", "units": "loss per sample",
                "description": f"dL/dpart . (replacement - part), from one forward and backward pass; {per_sample}"}),
            "gate_importance": ("branch", gate, {
                "long_name": "gate-gradient importance E|dL/dxi| (Michel et al. 2019)", "units": "loss per sample",
                "description": "xi: a scalar gate on the branch's part, 1 in the intact model"}),
            "spearman": (("layer", "ablation"), rho, {
                "long_name": "Spearman correlation of estimate with ablation_loss_change over the layer's branches",
                "units": "1"}),
            "spearman_p": (("layer", "ablation"), p, {"long_name": "p-value of spearman (no rank correlation)",
                                                      "units": "1"}),
            "gate_spearman": ("layer", gate_rho, {
                "long_name": "Spearman correlation of gate_importance with the zero ablation's loss change",
                "units": "1"}),
            "gate_spearman_p": ("layer", gate_p, {"long_name": "p-value of gate_spearman", "units": "1"}),
            "cost_seconds": ("way", self.seconds.copy(), {
                "long_name": "wall time of each way", "units": "s",
                "description": "ablation: the mean pass and every ablated pass; estimate: the gated forward and "
                               "backward (gives estimate and gate_importance)"}),
            "cost_passes": ("way", self.passes.copy(), {"long_name": "forward and backward passes of each way",
                                                           "units": "passes"}),
        }, coords=coords, attrs={"loss": self.loss, "intact_loss": self.clean / n,
                                 "intact_accuracy": self.clean_right / n if self.scored else float("nan"),
                                 "ablated_samples": self.count})

    def _rank_agreement(self, change, estimate, gate):
        """Per layer: Spearman of the estimate with the ablation (each ablation), and of the gate importance with
        the zero ablation (NaN without one, or for a layer of fewer than 3 branches)."""
        layers, m = len(self.layers), len(self.modes)
        rho, p = np.full((layers, m), np.nan), np.full((layers, m), np.nan)
        gate_rho, gate_p = np.full(layers, np.nan), np.full(layers, np.nan)
        for i, (layer, part) in enumerate(self.context.branchset.layer_slices()):
            if len(layer.branches) < 3:
                continue
            for j in range(m):
                rho[i, j], p[i, j] = _spearman(estimate[part, j], change[part, j])
            if "zero" in self.modes:
                gate_rho[i], gate_p[i] = _spearman(gate[part], change[part, self.modes.index("zero")])
        return rho, p, gate_rho, gate_p

    def summary(self, ds: xr.Dataset) -> dict:
        out = {"intact loss": round(float(ds.attrs["intact_loss"]), 4)}
        if np.isfinite(ds.attrs["intact_accuracy"]):
            out["intact accuracy"] = round(float(ds.attrs["intact_accuracy"]), 4)
        for mode in ds.ablation.values:
            values = ds.ablation_loss_change.sel(ablation=mode).values
            top = int(np.argmax(values))
            out[f"largest loss change ({mode})"] = f"{ds.branch.values[top]}: {values[top]:.4g}"
        out["median Spearman, estimate vs ablation"] = round(float(np.nanmedian(ds.spearman.values)), 3) \
            if np.isfinite(ds.spearman.values).any() else None
        out["cost, ablation / estimate"] = round(float(ds.cost_seconds[0] / max(float(ds.cost_seconds[1]), 1e-9)), 1)
        return out


def _spearman(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Spearman's rho of ``a`` and ``b`` and its p-value; NaN when either is constant."""
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return np.nan, np.nan
    result = spearmanr(a, b)
    return float(result.statistic), float(result.pvalue)


probekit_register_analyses, probekit_plot = analysis_hooks(Importance)
