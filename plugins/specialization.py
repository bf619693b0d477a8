"""``specialization``: which classes each branch of a summed classifier handles (paper Figs. 6 and 7).

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
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from probekit import Analysis, Batch
from probekit.hookspecs import analysis_hooks
from probekit.classifier import require_classifier
from probekit.schema import class_coords, sample_coords


class Specialization(Analysis):
    name = "specialization"
    description = "per branch and class: confidence alone, share of the true-class score; specialization index"

    def __init__(self, context, options):
        super().__init__(context, options)
        self.layer = require_classifier(context.branchset, context.data.classes, self.name)
        b, c = len(self.layer.branches), len(context.data.classes)
        self.confidence = torch.zeros(b, c, dtype=torch.float64, device=context.device)
        self.share = torch.zeros(b, c, dtype=torch.float64, device=context.device)
        self.top = torch.zeros(b, c, dtype=torch.float64, device=context.device)
        self.count = torch.zeros(c, dtype=torch.float64, device=context.device)
        self.contribution = context.sample_array(self.name, "contribution", ("sample", "branch"), (b,), np.float32, {
            "long_name": "branch's true-class score v_k(x)[y]", "units": "logit"})
        self.top_branch = context.sample_array(self.name, "top_branch", ("sample",), (), np.int16, {
            "long_name": "index of the branch with the largest true-class score"})

    def update(self, batch: Batch) -> None:
        if batch.targets is None:
            return
        v = batch.responses[self.layer.name]  # [N, K, C]
        y = batch.targets.long()
        classes = v.shape[2]
        if classes != len(self.context.data.classes):
            raise ValueError(f"branches output {classes} scores but the data has {len(self.context.data.classes)} "
                             "classes")
        true_score = v.gather(2, y.view(-1, 1, 1).expand(-1, v.shape[1], 1)).squeeze(2)  # [N, K]
        confidence = v.softmax(2).gather(2, y.view(-1, 1, 1).expand(-1, v.shape[1], 1)).squeeze(2)
        share = true_score / true_score.abs().sum(1, keepdim=True).clamp_min(1e-12)
        top = true_score.argmax(1)
        onehot = torch.nn.functional.one_hot(y, classes).double()  # [N, C]
        self.confidence += confidence.double().T @ onehot
        self.share += share.double().T @ onehot
        self.top += torch.nn.functional.one_hot(top, v.shape[1]).double().T @ onehot
        self.count += onehot.sum(0)
        start = int(batch.index[0])
        self.contribution.write(start, true_score.float().cpu().numpy())
        self.top_branch.write(start, top.to(torch.int16).cpu().numpy())

    def finalize(self) -> xr.Dataset:
        count = self.count.clamp_min(1)
        confidence = (self.confidence / count).cpu().numpy()
        share = (self.share / count).cpu().numpy()
        top = (self.top / count).cpu().numpy()
        profile = confidence / np.maximum(confidence.sum(1, keepdims=True), 1e-12)
        entropy = -(profile * np.log(np.maximum(profile, 1e-12))).sum(1)
        index = 1 - entropy / np.log(confidence.shape[1])
        names = np.array(self.layer.branches, dtype=object)
        ds = xr.Dataset(
            {
                "alone_confidence": (("branch", "cls"), confidence, {
                    "long_name": "confidence in the true class, branch alone", "units": "probability"}),
                "logit_share": (("branch", "cls"), share, {
                    "long_name": "share of the true-class score", "units": "1",
                    "description": "v_k[y] / sum_l |v_l[y]|, averaged over the class"}),
                "top_fraction": (("branch", "cls"), top, {
                    "long_name": "share of the class's samples where the branch contributes most", "units": "1"}),
                "specialization": ("branch", index, {
                    "long_name": "specialization index", "units": "1",
                    "description": "1 - H(alone_confidence profile) / log C"}),
                "class_count": ("cls", self.count.cpu().numpy().astype(np.int64), {"long_name": "samples"}),
            },
            coords={"branch": ("branch", names), **class_coords(self.context), **sample_coords(self.context)},
        )
        for array in (self.contribution, self.top_branch):
            if array.in_memory:
                ds[array.name] = (array.dims, array.values(), array.attrs)
        return ds

    def summary(self, ds: xr.Dataset) -> dict:
        index = ds.specialization.values
        best = ds.alone_confidence.values.argmax(1)
        top = int(np.argmax(index))
        return {
            "specialization index (min / median / max)": f"{index.min():.3f} / {np.median(index):.3f} / "
                                                          f"{index.max():.3f}",
            "most specialized branch": f"{ds.branch.values[top]} (best class {ds.class_name.values[best[top]]})",
            "distinct best classes across branches": int(len(set(best.tolist()))),
        }


probekit_register_analyses, probekit_plot = analysis_hooks(
    Specialization, "probekit_plugins.specialization_plot:plot_specialization")
