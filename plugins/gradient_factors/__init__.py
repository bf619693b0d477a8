"""``gradient-factors``: why a branch's gradient vanishes (paper section 5, Eqs. 6, 10, 11).

For summed branches ``f = sum_k v_k (+ R)`` the gradient of the loss on one
sample factorises as ``dL/dtheta_k = (dv_k/dtheta_k)^T . dL/df``: a
*distributive* factor that belongs to branch k and a *collaborative* factor
shared by all branches. Per sample and branch we measure both, the gradient's
norm, and which factor zeroes it:

* collaborative: ``|dL/df| <= collaborative_tol`` (the sample is solved);
* distributive: ``|dv_k/dtheta_k|_F <= distributive_tol x`` the largest
  branch's at that sample (the branch does not respond to its parameters
  here, e.g. a LeakyReLU on its flat side).

``dL/df`` is taken at the container's output (for a nested container, the
gradient reaching it); ``dv_k/dtheta_k`` is each sample's Jacobian, computed
with ``torch.func`` on branch k alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from probekit.api import (Analysis, analysis_hooks, Batch, forward_hooks, ProbekitError, resolve_loss, sample_coords,
                          summed_loss, call_model)

CAUSES = ("neither", "collaborative", "distributive", "both")  # code = collaborative + 2 * distributive


@dataclass
class GradientFactorsOptions:
    """``loss``: auto, mse, ce or clamped (see :mod:`probekit.models.losses`);
    ``distributive_tol`` (relative), ``collaborative_tol`` (absolute): when a factor counts as zero;
    ``chunk``: samples per vectorised Jacobian (lower it to save memory)."""

    loss: str = "auto"
    distributive_tol: float = 0.1
    collaborative_tol: float = 0.01
    chunk: int = 16

    def check(self):
        if not 0 <= self.distributive_tol <= 1 or self.collaborative_tol < 0 or self.chunk < 1:
            raise ProbekitError("gradient-factors: distributive_tol must be in [0, 1], collaborative_tol >= 0 "
                                "and chunk >= 1")


def branch_factors(module, x: torch.Tensor, g: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample ``|dv/dtheta|_F`` and ``|(dv/dtheta)^T g|`` of one branch.

    ``x``: the branch's inputs ``[N, ...]``; ``g``: dL/df ``[N, *out]``; returns two ``[N]`` tensors.
    """
    from torch.func import functional_call, jacrev, vmap

    params = {name: p.detach() for name, p in module.named_parameters()}
    buffers = {name: b.detach() for name, b in module.named_buffers()}

    def one(xi, gi):
        jac = jacrev(lambda p: functional_call(module, (p, buffers), (xi.unsqueeze(0),)).squeeze(0))(params)
        jac_sq = sum(j.pow(2).sum() for j in jac.values())
        grad_sq = sum(torch.tensordot(gi, j, dims=gi.dim()).pow(2).sum() for j in jac.values())
        return jac_sq.sqrt(), grad_sq.sqrt()

    return vmap(one, chunk_size=chunk)(x, g)


class GradientFactors(Analysis):
    name = "gradient-factors"
    plot = "probekit_plugins.gradient_factors.plot:plot_gradient_factors"
    needs_targets = True
    merge_rules = {"counts": "sum"}
    description = "collaborative and distributive gradient factors per sample and branch (paper section 5)"
    Options = GradientFactorsOptions
    needs_grad = True

    def __init__(self, context, options):
        super().__init__(context, options)
        self.layers = [layer for layer in context.branchset.layers if layer.kind == "sum"]
        if not self.layers or context.model is None:
            raise ProbekitError(
                f"gradient-factors needs summed branches (probekit.SummedBranches or a probekit_branches "
                f"container); this model's branches were found by {context.branchset.strategy}")
        self.loss = resolve_loss(options.loss, context.model, bool(context.data.classes), self.name)
        self.names = [name for layer in self.layers for name in layer.branches]
        b = len(self.names)

        def per_sample(var, dims, tail, dtype, attrs):
            return context.sample_array(self.name, var, dims, tail, dtype, attrs)

        self.collaborative = per_sample("collaborative", ("sample", "layer"), (len(self.layers),), np.float32, {
            "long_name": "collaborative factor |dL/df|", "units": "loss / output unit",
            "description": "norm of the loss gradient at the container's output"})
        self.distributive = per_sample("distributive", ("sample", "branch"), (b,), np.float32, {
            "long_name": "distributive factor |dv_k/dtheta_k|", "units": "output unit / parameter unit",
            "description": "Frobenius norm of the branch's Jacobian w.r.t. its own parameters"})
        self.gradient = per_sample("gradient", ("sample", "branch"), (b,), np.float32, {
            "long_name": "branch gradient |dL/dtheta_k|", "units": "loss / parameter unit"})
        self.zeroed = per_sample("zeroed_by", ("sample", "branch"), (b,), np.int8, {
            "long_name": "what zeroes the branch's gradient", "flag_values": list(range(4)),
            "flag_meanings": " ".join(CAUSES)})
        self.counts = np.zeros((b, len(CAUSES)), dtype=np.int64)

    def _forward_backward(self, batch: Batch):
        """Container outputs' gradients ``dL/df`` and each branch's input, from one forward and backward."""
        model = self.context.model
        outputs, inputs = {}, {}

        def keep_output(name):
            return lambda module, args, out: outputs.__setitem__(name, out)

        def keep_input(path):
            return lambda module, args: inputs.__setitem__(path, args[0].detach())

        after = [(layer.container, keep_output(layer.name)) for layer in self.layers]
        before = [(path, keep_input(path)) for layer in self.layers for path in layer.modules]
        with forward_hooks(model, after, before), torch.enable_grad():
            loss = summed_loss(self.loss, call_model(model, batch.inputs), batch.targets, self.name, batch.inputs)
            grads = torch.autograd.grad(loss, [outputs[layer.name] for layer in self.layers])
        return dict(zip([layer.name for layer in self.layers], grads, strict=True)), inputs

    def update(self, batch: Batch) -> None:
        grads, inputs = self._forward_backward(batch)
        model, chunk = self.context.model, self.options.chunk
        collaborative, distributive, gradient = [], [], []
        for layer in self.layers:
            g = grads[layer.name].detach()
            collaborative.append(g.flatten(1).norm(dim=1))
            for path in layer.modules:
                jac, grad = branch_factors(model.get_submodule(path), inputs[path], g, chunk)
                distributive.append(jac)
                gradient.append(grad)
        collab = torch.stack(collaborative, 1)  # [N, layers]
        dist, grad = torch.stack(distributive, 1), torch.stack(gradient, 1)  # [N, B]
        codes = self._classify(collab, dist)
        start = int(batch.index[0])
        for array, values in ((self.collaborative, collab), (self.distributive, dist), (self.gradient, grad)):
            array.write(start, values.float().cpu().numpy())
        self.zeroed.write(start, codes)
        for cause in range(len(CAUSES)):
            self.counts[:, cause] += (codes == cause).sum(0)

    def _classify(self, collab: torch.Tensor, dist: torch.Tensor) -> np.ndarray:
        """Cause codes ``[N, B]``: collaborative + 2 * distributive (see ``CAUSES``)."""
        codes, start = [], 0
        for index, layer in enumerate(self.layers):
            block = dist[:, start:start + len(layer.branches)]
            peak = block.max(dim=1, keepdim=True).values
            dist_zero = block <= self.options.distributive_tol * peak
            collab_zero = (collab[:, index] <= self.options.collaborative_tol)[:, None].expand_as(block)
            codes.append(collab_zero.long() + 2 * dist_zero.long())
            start += len(layer.branches)
        return torch.cat(codes, 1).to(torch.int8).cpu().numpy()

    def finalize(self) -> xr.Dataset:
        ctx = self.context
        total = self.counts.sum(1, keepdims=True)
        layer_of = [layer.name for layer in self.layers for _ in layer.branches]
        ds = xr.Dataset(
            {
                "zeroed_fraction": (("branch", "cause"), self.counts / np.maximum(total, 1), {
                    "long_name": "share of samples by what zeroes the gradient", "units": "1"}),
            },
            coords={
                "branch": ("branch", np.array(self.names, dtype=object)),
                "branch_layer": ("branch", np.array(layer_of, dtype=object)),
                "layer": ("layer", np.array([layer.name for layer in self.layers], dtype=object)),
                "cause": ("cause", np.array(CAUSES, dtype=object)),
                **sample_coords(ctx),
            },
            attrs={"loss": self.loss, "distributive_tol": self.options.distributive_tol,
                   "collaborative_tol": self.options.collaborative_tol},
        )
        for array in (self.collaborative, self.distributive, self.gradient, self.zeroed):
            if array.in_memory:
                ds[array.name] = (array.dims, array.values(), array.attrs)
        return ds

    def summary(self, ds: xr.Dataset) -> dict:
        shares = self.counts.sum(0) / max(self.counts.sum(), 1)
        zeroed = shares[1:].sum()
        out = {f"share zeroed by {cause}": round(float(s), 4) for cause, s in zip(CAUSES, shares, strict=True)}
        if zeroed:
            out["distributive among zeroed"] = round(float((shares[2] + shares[3]) / zeroed), 4)
        return out


probekit_register_analyses, probekit_plot = analysis_hooks(GradientFactors)
