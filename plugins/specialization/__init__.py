"""``specialization``: which classes each branch handles (paper Figs. 6 and 7).

For ``f = sum_k v_k`` with class scores ``v_k(x) in R^C``, per branch k and
class c (averaged over the samples of class c):

* ``alone_confidence``: softmax(v_k(x))[c], the branch's confidence in the
  true class when it acts alone;
* ``logit_share``: v_k(x)[c] / sum_l |v_l(x)[c]|, its signed share of the
  true-class score;

and per branch a ``specialization`` index, 1 - H(p_k) / log C, where p_k is
the branch's alone-confidence profile over classes normalised to sum to 1
(0: the same for every class; 1: one class only). Per sample it stores the
branch that contributes most to the true-class score (``top_branch``) and
every branch's contribution (streamed to disk).

Evidence (``specialization_p``, ``_p_adjusted``, ``_null``, ``_ci`` per branch; ``heterogeneity`` and its
evidence per layer): the null exchanges the branches of a layer within every sample
(:mod:`probekit_plugins.specialization.evidence`), so identical branches are never significant; intervals
bootstrap the samples.

Models without a summed classifier at the root (e.g. a ResNeXt's grouped
convs) are scored by the norm of each branch's response instead
(``attrs['mode'] == 'responses'``): ``class_score`` is then the mean response
norm per class, the index is computed from that profile, and
``alone_confidence`` / ``logit_share`` are absent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from probekit.api import (add_evidence, Analysis, analysis_hooks, Batch, BranchScores, class_coords,
                          describe_p, evidence_rng, EvidenceOptions, sample_coords, SIGNIFICANCE)
from probekit_plugins.specialization import evidence

NULL = "the scores of the branches of each layer exchanged independently within every sample"


@dataclass
class SpecializationOptions(EvidenceOptions):
    """The evidence's permutations, resamples, interval level and correction (:class:`probekit.api.EvidenceOptions`)."""


class Specialization(Analysis):
    name = "specialization"
    plot = "probekit_plugins.specialization.plot:plot_specialization"
    needs_classes = True
    merge_rules = {**{name: "sum" for name in ("score", "confidence", "share", "top", "count")}, "targets": "rows"}
    description = "per branch and class: confidence alone, share of the true-class score; specialization index"
    Options = SpecializationOptions

    def __init__(self, context, options):
        super().__init__(context, options)
        self.scores = BranchScores(context.branchset, context.data.classes, self.name)
        b, c = len(self.scores.names), len(context.data.classes)
        zeros = lambda: torch.zeros(b, c, dtype=torch.float64, device=context.device)  # noqa: E731
        self.score, self.confidence, self.share, self.top = zeros(), zeros(), zeros(), zeros()
        self.count = torch.zeros(c, dtype=torch.float64, device=context.device)
        self.contribution = context.sample_array(self.name, "contribution", ("sample", "branch"), (b,), np.float32, {
            "long_name": "branch's true-class score v_k(x)[y]" if self.scores.mode == "classifier"
            else "branch response norm", "units": "logit" if self.scores.mode == "classifier" else "output units"})
        self.sample_confidence = context.sample_array(
            self.name, "sample_confidence", ("sample", "branch"), (b,), np.float32, {
                "long_name": "branch's confidence in the true class alone, per sample", "units": "probability"}
        ) if self.scores.mode == "classifier" else None
        self.targets = np.full(context.n_samples, -1, dtype=np.int64)
        self.top_branch = context.sample_array(
            self.name, "top_branch", ("sample", "layer"), (len(self.scores.layers),), np.int16,
            {"long_name": "index within its layer of the branch with the largest score"})

    def update(self, batch: Batch) -> None:
        if batch.targets is None:
            return
        y = batch.targets.long()
        score, confidence = self.scores(batch, y)  # [N, B]
        onehot = torch.nn.functional.one_hot(y, len(self.count)).double()  # [N, C]
        tops, top_index = torch.zeros_like(score), []
        for _, part in self.scores.layer_slices():
            best = score[:, part].argmax(1)
            tops[:, part] = torch.nn.functional.one_hot(best, part.stop - part.start).to(score.dtype)
            top_index.append(best)
        self.score += score.double().T @ onehot
        self.confidence += confidence.double().T @ onehot
        self.share += (score / score.abs().sum(1, keepdim=True).clamp_min(1e-12)).double().T @ onehot
        self.top += tops.double().T @ onehot
        self.count += onehot.sum(0)
        start = int(batch.index[0])
        self.contribution.write(start, score.float().cpu().numpy())
        self.top_branch.write(start, torch.stack(top_index, 1).to(torch.int16).cpu().numpy())
        if self.sample_confidence is not None:
            self.sample_confidence.write(start, confidence.float().cpu().numpy())
        self.targets[start:start + len(y)] = y.cpu().numpy()

    def finalize(self) -> xr.Dataset:
        count = self.count.clamp_min(1)
        score, confidence, share, top = ((t / count).cpu().numpy()
                                         for t in (self.score, self.confidence, self.share, self.top))
        classifier = self.scores.mode == "classifier"
        profile = np.clip(confidence, 0, None)
        profile = profile / np.maximum(profile.sum(1, keepdims=True), 1e-12)
        entropy = -(profile * np.log(np.maximum(profile, 1e-12))).sum(1)
        index = 1 - entropy / np.log(confidence.shape[1])
        layer_of = [layer.name for layer, part in self.scores.layer_slices() for _ in range(part.start, part.stop)]
        variables = {
            "class_score": (("branch", "cls"), score, {
                "long_name": "mean true-class score" if classifier else "mean response norm",
                "units": "logit" if classifier else "output units"}),
            "top_fraction": (("branch", "cls"), top, {
                "long_name": "share of the class's samples where the branch scores highest in its layer",
                "units": "1"}),
            "specialization": ("branch", index, {
                "long_name": "specialization index", "units": "1",
                "description": "1 - H(p) / log C, p the branch's normalised class profile "
                               + ("(alone_confidence)" if classifier else "(class_score)")}),
            "class_count": ("cls", self.count.cpu().numpy().astype(np.int64), {"long_name": "samples"}),
        }
        if classifier:
            variables["alone_confidence"] = (("branch", "cls"), confidence, {
                "long_name": "confidence in the true class, branch alone", "units": "probability"})
            variables["logit_share"] = (("branch", "cls"), share, {
                "long_name": "share of the true-class score", "units": "1",
                "description": "v_k[y] / sum_l |v_l[y]|, averaged over the class"})
        ds = xr.Dataset(
            variables,
            coords={"branch": ("branch", np.array(self.scores.names, dtype=object)),
                    "branch_layer": ("branch", np.array(layer_of, dtype=object)),
                    "layer": ("layer", np.array([layer.name for layer in self.scores.layers], dtype=object)),
                    **class_coords(self.context), **sample_coords(self.context)},
            attrs={"mode": self.scores.mode},
        )
        for array in (self.contribution, self.top_branch, self.sample_confidence):
            if array is not None and array.in_memory:
                ds[array.name] = (array.dims, array.values(), array.attrs)
        return self._with_evidence(ds)

    def _with_evidence(self, ds: xr.Dataset) -> xr.Dataset:
        """The index's and each layer's heterogeneity's null, p-values and intervals (from the per-sample
        scores)."""
        source = self.sample_confidence or self.contribution
        source.checkpoint()
        seen = self.targets >= 0  # every probed sample with a label
        values = source.read(0, self.context.n_samples)[seen].astype(np.float64)
        parts = [part for _, part in self.scores.layer_slices()]
        o = self.options
        found = evidence.evidence(values, self.targets[seen], len(self.count), parts, o.permutations, o.resamples,
                                  o.level, evidence_rng(self.context.seed, self.name))
        ds = ds.assign(heterogeneity=("layer", found["heterogeneity"]["observed"], {
            "long_name": "spread of the branches' class profiles", "units": "profile units^2",
            "description": "mean over the layer's branches and classes of (profile - the layer's mean profile)^2; "
                           "0 when every branch has the same class profile"}))
        ds = add_evidence(ds, "specialization", ("branch",), found["index"], o, permuted=NULL)
        return add_evidence(ds, "heterogeneity", ("layer",), found["heterogeneity"], o, permuted=NULL)

    def summary(self, ds: xr.Dataset) -> dict:
        index = ds.specialization.values
        profile = ds.alone_confidence.values if "alone_confidence" in ds else ds.class_score.values
        broken = ~(np.isfinite(index) & np.isfinite(profile).all(1))
        if broken.any():  # a NaN score is no evidence of specialization: claim nothing
            return {"scores": ds.attrs["mode"],
                    "most specialized branch": f"unknown (NaN/Inf scores in {int(broken.sum())} branches, e.g. "
                                               f"{ds.branch.values[broken][0]})"}
        best = profile.argmax(1)
        top = int(np.argmax(index))
        out = {
            "scores": ds.attrs["mode"],
            "specialization index (min / median / max)": f"{index.min():.3f} / {np.median(index):.3f} / "
                                                          f"{index.max():.3f}",
            "most specialized branch": f"{ds.branch.values[top]} (best class {ds.class_name.values[best[top]]})",
            "distinct best classes across branches": int(len(set(best.tolist()))),
        }
        if "specialization_p_adjusted" in ds:
            adjusted = ds.specialization_p_adjusted.values
            out["most specialized branch"] += f", {describe_p(float(adjusted[top]))}"
            out["branches specialized beyond the null"] = (
                f"{int((adjusted < SIGNIFICANCE).sum())} of {len(adjusted)} "
                f"({ds.specialization_p_adjusted.attrs['correction']}-adjusted p < {SIGNIFICANCE})")
        if "heterogeneity_p_adjusted" in ds:
            out |= {f"class profiles differ between branches in {layer}": describe_p(float(p))
                    for layer, p in zip(ds.layer.values[:8], ds.heterogeneity_p_adjusted.values[:8], strict=False)}
        return out

probekit_register_analyses, probekit_plot = analysis_hooks(Specialization)
