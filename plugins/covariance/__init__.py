"""``covariance``: how branch responses covary (paper Figs. 3 right and 5).

Per layer, F is the ``K x (N*D)`` matrix of the K branches' flattened
responses over all N samples. We accumulate ``F F^T`` batch by batch (so
memory does not grow with N) and report it divided by N, plus the normalised
correlation ``F_k . F_l / (|F_k| |F_l|)``. Branches of different layers live in
different response spaces: those entries are NaN.

Evidence (:mod:`probekit_plugins.covariance.evidence`): per layer, ``mean_abs_corr`` (the mean |corr| between
distinct branches) is tested against every branch's samples shuffled independently (two-sided), on a
``sketch``-value sketch of each response kept per sample (exact when a response has at most that many values);
its interval bootstraps the samples of the same sketch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import xarray as xr

from probekit.api import (add_evidence, Analysis, analysis_hooks, Batch, branch_coords, compensated_add,
                          compensated_value, describe_p, evidence_rng, EvidenceOptions, layer_coords, ProbekitError)
from probekit_plugins.covariance import evidence

NULL = "the samples of every branch shuffled independently (on the responses' sketch)"


@dataclass
class CovarianceOptions(EvidenceOptions):
    """``sketch``: values kept per branch response and sample for the null and the intervals; and the evidence's
    options (:class:`probekit.api.EvidenceOptions`; 199 permutations by default, one test per layer)."""

    sketch: int = field(default=16, metadata={"help": "values kept per branch response and sample for the null"})
    permutations: int = field(default=199, metadata={"help": "shuffles of the null (0: no test)"})

    def check(self):
        super().check()
        if self.sketch < 1:
            raise ProbekitError(f"covariance.sketch must be >= 1, not {self.sketch}")


class Covariance(Analysis):
    name = "covariance"
    plot = "probekit_plugins.covariance.plot:plot_covariance"
    merge_rules = {"gram": "compensated-sum", "count": "sum"}  # bitwise the same with --nproc
    description = "streaming F F^T between branch responses, and their correlation"
    Options = CovarianceOptions

    def __init__(self, context, options):
        super().__init__(context, options)
        self.sketch = context.sample_array(self.name, "response_sketch", ("sample", "branch", "sketch"),
                                           (len(context.branchset), options.sketch), np.float32, {
                                               "long_name": "sketch of each branch's response per sample",
                                               "description": "the response itself (zero-padded) when it has at "
                                                              "most `sketch` values, else a Gaussian projection"}
                                           ) if options.permutations or options.resamples else None  # evidence
        self.layer_index = {layer.name: i for i, layer in enumerate(context.branchset.layers)}
        self.projections = {}  # layer name -> its sketch matrix, made from its response width at the first batch
        self.gram = {  # compensated sums [2, K, K] (probekit.api.compensated_add)
            layer.name: torch.zeros(2, len(layer.branches), len(layer.branches), dtype=torch.float64,
                                    device=context.device)
            for layer in context.branchset.layers
        }
        self.count = 0

    def update(self, batch: Batch) -> None:
        parts = []
        for name, responses in batch.responses.items():  # [N, K, D]
            self.gram[name] = compensated_add(self.gram[name], torch.bmm(responses, responses.transpose(1, 2)).sum(0))
            if self.sketch is None:
                continue
            if name not in self.projections:
                self.projections[name] = evidence.projection(responses.shape[2], self.options.sketch,
                                                             self.context.seed + self.layer_index[name])
            parts.append(evidence.sketched(responses, self.projections[name], self.options.sketch))
        if self.sketch is not None:
            self.sketch.write(int(batch.index[0]), np.concatenate(parts, axis=1))
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
        ds = xr.Dataset(
            {
                "cov": (("branch", "branch_other"), second_moment, {
                    "long_name": "branch response covariance F F^T / N", "units": "output units^2",
                    "description": "uncentred, as in the paper; NaN across layers"}),
                "corr": (("branch", "branch_other"), corr, {
                    "long_name": "branch response correlation", "units": "1",
                    "description": "F_k.F_l / (|F_k||F_l|); NaN across layers or for an all-zero branch"}),
            },
            coords=coords,
            attrs={"n_samples": self.count, "sketch": self.options.sketch},
        )
        if self.sketch is not None and self.sketch.in_memory:
            ds[self.sketch.name] = (self.sketch.dims, self.sketch.values(), self.sketch.attrs)
        return self._with_evidence(ds, corr)

    def _with_evidence(self, ds: xr.Dataset, corr: np.ndarray) -> xr.Dataset:
        """Per layer: the mean |corr| between its branches, tested against shuffled samples, with an interval."""
        o, layers = self.options, list(self.context.branchset.layer_slices())
        exact = [evidence.mean_of_finite(np.abs(corr[part, part][~np.eye(part.stop - part.start, dtype=bool)]))
                 for _, part in layers]
        ds = ds.assign_coords(layer_coords(self.context)).assign(mean_abs_corr=("layer", np.array(exact), {
            "long_name": "mean |corr| between distinct branches of the layer", "units": "1"}))
        if self.sketch is None:
            return ds
        self.sketch.checkpoint()
        sketch = self.sketch.read(0, self.context.n_samples)
        rng = evidence_rng(self.context.seed, self.name)
        found = [evidence.evidence(sketch[:, part], o.permutations, o.resamples, o.level, rng) for _, part in layers]
        stacked = {key: np.stack([f[key] for f in found]) for key in found[0]}
        return add_evidence(ds, "mean_abs_corr", ("layer",), stacked, o, permuted=NULL, alternative="two-sided",
                            resampled="samples (on the responses' sketch)")

    def summary(self, ds: xr.Dataset) -> dict:
        corr = ds.corr.values
        off = corr[~np.eye(len(corr), dtype=bool) & np.isfinite(corr)]
        out = {"mean |corr| off the diagonal": round(float(np.abs(off).mean()), 4) if off.size else "n/a"}
        if "mean_abs_corr_p_adjusted" in ds:
            for layer, value, null, p in zip(ds.layer.values[:8], ds.mean_abs_corr.values,
                                             ds.mean_abs_corr_null.values, ds.mean_abs_corr_p_adjusted.values,
                                             strict=False):
                out[f"mean |corr| in {layer} (shuffled samples)"] = (f"{value:.4f} ({null:.4f}): "
                                                                     f"{describe_p(float(p))}")
        return out


probekit_register_analyses, probekit_plot = analysis_hooks(Covariance)
