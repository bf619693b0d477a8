"""``attribution``: where in the input each branch looks for the true class (captum).

Each branch of a summed classifier is handed to captum as its own forward
function: the attribution of branch k's true-class output v_k(x)[y] with
respect to the branch's own input (what the container passes it; for
``cifar10-branched16`` the normalised image). On a gated classifier the
function is the gated contribution g_k(x) e_k(x)[y], when the gate reads
the experts' input. Methods: captum's
``IntegratedGradients`` (zero baseline) or ``Saliency``; nothing of them is
reimplemented here. About ``max_samples`` samples spread evenly over the
data (every n-th) are attributed and averaged per class (absolute values,
summed over channels); the first ``store`` of them are kept whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from probekit.api import Analysis, analysis_hooks, Batch, class_coords, forward_hooks, ProbekitError, require_classifier

METHODS = ("integrated-gradients", "saliency")


@dataclass
class AttributionOptions:
    """``method``: integrated-gradients or saliency; ``max_samples``: about how many samples are attributed
    (every n-th of the data); ``store``: samples whose per-branch maps are stored whole; ``steps``: IG steps."""

    method: str = "integrated-gradients"
    max_samples: int = 100
    store: int = 16
    steps: int = 32

    def check(self):
        if self.method not in METHODS:
            raise ProbekitError(f"attribution.method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.max_samples < 1 or self.store < 0 or self.steps < 1:
            raise ProbekitError("attribution: max_samples and steps must be >= 1, store >= 0")


class GatedBranch(torch.nn.Module):
    """Expert k of a gated layer as one function: ``x -> gate(x)[:, k] * expert(x)``, its gated contribution."""

    def __init__(self, gate: torch.nn.Module, expert: torch.nn.Module, k: int):
        super().__init__()
        self.gate, self.expert, self.k = gate, expert, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expert(x)
        return self.gate(x)[:, self.k].reshape(-1, *[1] * (out.dim() - 1)) * out


def attribute(branch: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, options) -> torch.Tensor:
    """captum attributions of ``branch``'s ``targets`` outputs w.r.t. ``inputs``; same shape as ``inputs``."""
    from captum.attr import IntegratedGradients, Saliency

    inputs = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        if options.method == "saliency":
            return Saliency(branch).attribute(inputs, target=targets, abs=True).detach()
        return IntegratedGradients(branch).attribute(inputs, target=targets, n_steps=options.steps,
                                                     internal_batch_size=len(inputs) * 8).detach()


class Attribution(Analysis):
    name = "attribution"
    plot = "probekit_plugins.attribution.plot:plot_attribution"
    needs_classes = True
    merge_rules = {"sums": "sum", "count": "sum", "kept": "custom"}
    description = "per-branch captum attributions of the true-class output, averaged per class"
    Options = AttributionOptions
    needs_grad = True

    def __init__(self, context, options):
        super().__init__(context, options)
        self.layer = require_classifier(context.branchset, context.data.classes, self.name)
        if context.model is None:
            raise ProbekitError("attribution needs the model")
        self.stride = max(1, context.n_samples // options.max_samples)
        self.sums = None  # [K, C, H, W]: sum over samples of |attribution| summed over channels
        self.count = torch.zeros(len(context.data.classes), dtype=torch.long)
        self.kept = None  # the first `store` attributed samples: {"maps", "targets", "index"}, by position

    def _branch_inputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """What each branch module receives for ``x`` (one forward pass with pre-hooks)."""
        model, seen = self.context.model, {}
        paths = list(self.layer.modules) + ([self.layer.gate] if self.layer.gate else [])
        before = [(path, lambda module, args, path=path: seen.__setitem__(path, args[0].detach()))
                  for path in paths]
        with forward_hooks(model, before=before), torch.no_grad():
            model(x)
        if self.layer.gate and not all(torch.equal(seen[self.layer.gate], seen[p]) for p in self.layer.modules):
            raise ProbekitError("attribution on gated experts needs the gate to read the experts' own input "
                                f"({self.layer.gate} reads another)")
        return seen

    def _branch_function(self, k: int, path: str) -> torch.nn.Module:
        """Branch k as captum's forward function: the module, or on a gated layer its gated contribution."""
        model = self.context.model
        if self.layer.gate:
            return GatedBranch(model.get_submodule(self.layer.gate), model.get_submodule(path), k)
        return model.get_submodule(path)

    def update(self, batch: Batch) -> None:
        chosen = (batch.index % self.stride == 0).to(batch.inputs.device)
        if batch.targets is None or not bool(chosen.any()):
            return
        x, y = batch.inputs[chosen].detach(), batch.targets[chosen].long()
        inputs = self._branch_inputs(x)
        maps = []
        for k, path in enumerate(self.layer.modules):
            maps.append(attribute(self._branch_function(k, path), inputs[path], y, self.options).cpu())
        maps = torch.stack(maps, 1)  # [n, K, *input]
        if maps.dim() != 5:
            raise ProbekitError(f"attribution needs image inputs [N, C, H, W]; the branches get "
                                f"{tuple(maps.shape[2:])}")
        heat = maps.abs().sum(2)  # [n, K, H, W]
        if self.sums is None:
            self.sums = torch.zeros(heat.shape[1], len(self.count), *heat.shape[2:], dtype=torch.float64)
        yc = y.cpu()
        self.sums.index_add_(1, yc, heat.transpose(0, 1).double())
        self.count += torch.bincount(yc, minlength=len(self.count))
        new = {"maps": maps.float(), "targets": yc, "index": batch.index[chosen.cpu()]}
        self.kept = new if self.kept is None else self.merge_kept(self.kept, new)

    def merge_kept(self, mine: dict, theirs: dict) -> dict:
        """The first ``store`` samples (by position) of both sets."""
        joined = {key: torch.cat([mine[key], theirs[key]]) for key in mine}
        order = torch.argsort(joined["index"])[: self.options.store]
        return {key: value[order] for key, value in joined.items()}

    def finalize(self) -> xr.Dataset:
        if self.sums is None:
            raise ProbekitError("attribution saw no sample with a target")
        mean = (self.sums / self.count.clamp_min(1).view(1, -1, 1, 1)).numpy()
        ds = xr.Dataset(
            {
                "class_map": (("branch", "cls", "y", "x"), mean.astype(np.float32), {
                    "long_name": f"mean |{self.options.method}| over channels", "units": "attribution"}),
                "attributed": ("cls", self.count.numpy(), {"long_name": "samples attributed", "units": "samples"}),
            },
            coords={"branch": ("branch", np.array(self.layer.branches, dtype=object)), **class_coords(self.context)},
            attrs={"method": self.options.method, "steps": self.options.steps,
                   "input": "each branch's own input (for cifar10-branched16: the normalised image)"},
        )
        if self.kept is not None and len(self.kept["index"]):
            maps = self.kept["maps"].numpy()
            positions = self.kept["index"].numpy()
            ids = np.asarray([self.context.data.sample_ids[i] for i in positions], dtype=object)
            ds = ds.assign_coords(sample=("sample", positions), sample_id=("sample", ids),
                                  target=("sample", self.kept["targets"].numpy()))
            ds["attribution"] = (("sample", "branch", "channel", "y", "x"), maps, {
                "long_name": f"{self.options.method} attribution of the true-class output", "units": "attribution"})
        return ds

    def summary(self, ds: xr.Dataset) -> dict:
        return {"method": ds.attrs["method"], "samples attributed": int(ds.attributed.sum())}


probekit_register_analyses, probekit_plot = analysis_hooks(Attribution)
