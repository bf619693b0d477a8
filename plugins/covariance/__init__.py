"""``covariance``: how branch responses covary (paper Figs. 3 right and 5).

Per layer, F is the ``K x (N*D)`` matrix of the K branches' flattened
responses over all N samples. We accumulate ``F F^T`` batch by batch (so
memory does not grow with N) and report it divided by N, plus the normalised
correlation ``F_k . F_l / (|F_k| |F_l|)``. Branches of different layers live in
different response spaces: those entries are NaN.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from probekit.api import Analysis, analysis_hooks, Batch, branch_coords, compensated_add, compensated_value


class Covariance(Analysis):
    name = "covariance"
    plot = "probekit_plugins.covariance.plot:plot_covariance"
    merge_rules = {"gram": "compensated-sum", "count": "sum"}  # bitwise the same with --nproc
    description = "streaming F F^T between branch responses, and their correlation"

    def __init__(self, context, options):
        super().__init__(context, options)
        self.gram = {  # compensated sums [2, K, K] (probekit.api.compensated_add)
            layer.name: torch.zeros(2, len(layer.branches), len(layer.branches), dtype=torch.float64,
                                    device=context.device)
            for layer in context.branchset.layers
        }
        self.count = 0

    def update(self, batch: Batch) -> None:
        for name, responses in batch.responses.items():  # [N, K, D]
            self.gram[name] = compensated_add(self.gram[name], torch.bmm(responses, responses.transpose(1, 2)).sum(0))
        self.count += batch.index.shape[0]

    def finalize(self) -> xr.Dataset:
        b = len(self.context.branchset)
        gram = np.full((b, b), np.nan)
        for layer, branches in self.context.branchset.layer_slices():
            gram[branches, branches] = compensated_value(self.gram[layer.name]).cpu().numpy()
        second_moment = gram / max(self.count, 1)
        diag = np.sqrt(np.diag(gram))
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = gram / np.outer(diag, diag)
        coords = {**branch_coords(self.context), **branch_coords(self.context, "branch_other")}
        return xr.Dataset(
            {
                "cov": (("branch", "branch_other"), second_moment, {
                    "long_name": "branch response covariance F F^T / N", "units": "output units^2",
                    "description": "uncentred, as in the paper; NaN across layers"}),
                "corr": (("branch", "branch_other"), corr, {
                    "long_name": "branch response correlation", "units": "1",
                    "description": "F_k.F_l / (|F_k||F_l|); NaN across layers or for an all-zero branch"}),
            },
            coords=coords,
            attrs={"n_samples": self.count},
        )

    def summary(self, ds: xr.Dataset) -> dict:
        corr = ds.corr.values
        off = corr[~np.eye(len(corr), dtype=bool) & np.isfinite(corr)]
        return {"mean |corr| off the diagonal": round(float(np.abs(off).mean()), 4) if off.size else "n/a"}


probekit_register_analyses, probekit_plot = analysis_hooks(Covariance)
