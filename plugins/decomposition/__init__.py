"""``decomposition``: a generator's branch outputs as image components (paper section 7, Figs. 10, 11, 18).

For ``f(x) = R + sum_k v_k``, stores every component ``v_k``, ``R`` and the
output per sample, and measures how the branches share the image: each
branch's share of the component energy, the correlation between components
(over the pixels of one image, averaged over samples), active branches (the
paper's 10% rule on the response norm), and the output's fidelity to the
input (PSNR and SSIM on [0, 1] images, output clipped to [0, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from probekit.api import (active_flags, Analysis, analysis_hooks, Batch, components, count_flags, describe_count,
                          fidelity, image_layer, inputs_like, pixel_correlation, ProbekitError, relative_norms,
                          sample_coords)


@dataclass
class DecompositionOptions:
    """``threshold``: active when the norm >= threshold x the largest branch's; ``energy_floor``: the share of
    component energy a branch must carry to count as carrying the image (summary only)."""

    threshold: float = 0.1
    energy_floor: float = 0.05

    def check(self):
        if not (0 <= self.threshold <= 1 and 0 <= self.energy_floor <= 1):
            raise ProbekitError("decomposition.threshold and decomposition.energy_floor must be in [0, 1]")


class Decomposition(Analysis):
    name = "decomposition"
    plot = "probekit_plugins.decomposition.plot:plot_decomposition"
    merge_rules = {"energy": "sum", "corr": "sum", "abs_corr": "sum", "fidelity_sums": "sum", "targets": "rows"}
    description = "generator branch outputs as image components: energy shares, correlation, fidelity"
    Options = DecompositionOptions

    def __init__(self, context, options):
        super().__init__(context, options)
        self.layer = None
        self.arrays: dict = {}
        self.energy = self.corr = None
        self.abs_corr = 0.0
        self.fidelity_sums = np.zeros(2)  # PSNR, SSIM
        self.targets = None

    def _start(self, batch: Batch) -> None:
        self.layer = image_layer(self.context.branchset, batch.outputs, self.name)
        k, image = len(self.layer.branches), tuple(batch.outputs.shape[1:])
        spec = {
            "component": (("sample", "branch", "channel", "y", "x"), (k, *image), "branch output v_k"),
            "residual": (("sample", "channel", "y", "x"), image, "R = f(x) - sum_k v_k"),
            "output": (("sample", "channel", "y", "x"), image, "model output f(x)"),
        }
        if inputs_like(batch.inputs, batch.outputs) is not None:
            spec["input"] = (("sample", "channel", "y", "x"), image, "input, resized to the output")
            spec["psnr"] = (("sample",), (), "PSNR of the output against the input")
            spec["ssim"] = (("sample",), (), "SSIM of the output against the input")
        units = {"psnr": "dB", "ssim": "1"}
        self.arrays = {name: self.context.sample_array(self.name, name, dims, tail, np.float32, {
            "long_name": long_name, "units": units.get(name, "image units")})
            for name, (dims, tail, long_name) in spec.items()}
        if self.energy is None:  # (a resumed run restores it before its first batch)
            self.energy = torch.zeros(k, dtype=torch.float64)
            self.corr = torch.zeros(k, k, dtype=torch.float64)

    def update(self, batch: Batch) -> None:
        if self.layer is None:
            self._start(batch)
        parts = components(batch, self.layer, self.name)
        start = int(batch.index[0])
        rows = {"component": parts, "residual": batch.outputs - parts.sum(1), "output": batch.outputs}
        target = inputs_like(batch.inputs, batch.outputs)
        if target is not None:
            rows["input"] = target
            psnr, ssim = fidelity(batch.outputs.float().cpu().numpy(), target.float().cpu().numpy())
            rows["psnr"], rows["ssim"] = torch.from_numpy(psnr), torch.from_numpy(ssim)
            self.fidelity_sums += [psnr.sum(), ssim.sum()]
        for name, values in rows.items():
            self.arrays[name].write(start, values.float().cpu().numpy())
        self.energy += parts.double().pow(2).flatten(2).sum(2).sum(0).cpu()
        corr = pixel_correlation(parts).cpu()
        self.corr += corr.sum(0)
        k = corr.shape[1]
        off = ~torch.eye(k, dtype=torch.bool)
        self.abs_corr += float(corr.abs()[:, off].sum()) / max(1, k * (k - 1))
        if batch.targets is not None:
            if self.targets is None:
                self.targets = np.zeros(self.context.n_samples, dtype=np.int64)
            self.targets[start:start + len(batch.targets)] = batch.targets.cpu().numpy()

    def finalize(self) -> xr.Dataset:
        if self.layer is None:
            raise ProbekitError("decomposition saw no batch")
        n = self.context.n_samples
        energy = self.energy.numpy()
        norm = np.sqrt(energy)
        relative = relative_norms(norm)
        names = np.array(self.layer.branches, dtype=object)
        ds = xr.Dataset({
            "energy_share": ("branch", energy / energy.sum() if energy.sum() > 0 else energy, {
                "long_name": "share of the summed component energy sum_n |v_k|^2", "units": "1"}),
            "active": ("branch", active_flags(relative, self.options.threshold), {
                "long_name": "active branch", "description": f"1 when norm >= {self.options.threshold} x the "
                                                             "largest, 0 when not, NaN when unknown (NaN/Inf)"}),
            "correlation": (("branch", "branch_other"), self.corr.numpy() / n, {
                "long_name": "correlation of two components over the pixels of an image, mean over samples",
                "units": "1"}),
            "mean_abs_correlation": ((), self.abs_corr / n, {
                "long_name": "mean |correlation| between distinct components (per image, then over samples)",
                "units": "1"}),
        }, coords={"branch": ("branch", names), "branch_other": ("branch_other", names),
                   **sample_coords(self.context, self.targets)},
            attrs={"layer": self.layer.name, "threshold": self.options.threshold,
                   "energy_floor": self.options.energy_floor})
        if "psnr" in self.arrays:
            ds["mean_psnr"] = ((), self.fidelity_sums[0] / n, {"long_name": "mean PSNR against the input",
                                                               "units": "dB"})
            ds["mean_ssim"] = ((), self.fidelity_sums[1] / n, {"long_name": "mean SSIM against the input",
                                                               "units": "1"})
        for array in self.arrays.values():
            if array.in_memory:
                ds[array.name] = (array.dims, array.values(), array.attrs)
        return ds

    def summary(self, ds: xr.Dataset) -> dict:
        out = {"active branches": describe_count(count_flags(ds.active.values)[0], ds.sizes["branch"]),
               f"branches with >= {ds.attrs['energy_floor']:.0%} of the energy":
                   int((ds.energy_share >= ds.attrs["energy_floor"]).sum()),
               "mean |correlation| between components": round(float(ds.mean_abs_correlation), 4)}
        if "mean_psnr" in ds:
            out["mean PSNR [dB]"] = round(float(ds.mean_psnr), 2)
            out["mean SSIM"] = round(float(ds.mean_ssim), 4)
        return out


probekit_register_analyses, probekit_plot = analysis_hooks(Decomposition)
