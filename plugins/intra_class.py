"""``intra-class``: which samples of a class each branch is most confident about (paper Fig. 8).

Per (branch, class), over the samples of that class: the top ``top_percent``
percent by the branch's confidence when it acts alone (softmax(v_k(x))[y];
for branches that are not classifiers, e.g. grouped convs, by the norm of the
branch's response: ``attrs['mode'] == 'responses'``),
as sample positions, ids and confidences, plus the input images of the best
``thumbnails`` of them for the report. Streaming: a running top-k per
(branch, class), merged batch by batch with ``torch.topk``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from probekit import Analysis, Batch
from probekit.hookspecs import analysis_hooks
from probekit.classifier import BranchScores
from probekit.errors import ProbekitError
from probekit.schema import class_coords


@dataclass
class IntraClassOptions:
    """``top_percent``: share of each class kept per branch (percent); ``thumbnails``: images kept per list."""

    top_percent: float = 2.0
    thumbnails: int = 8

    def check(self):
        if not 0 < self.top_percent <= 100 or self.thumbnails < 0:
            raise ProbekitError("intra-class.top_percent must be in (0, 100] and intra-class.thumbnails >= 0")


class IntraClass(Analysis):
    name = "intra-class"
    description = "per branch and class, the samples the branch alone is most confident about"
    Options = IntraClassOptions

    def __init__(self, context, options):
        super().__init__(context, options)
        self.scores = BranchScores(context.branchset, context.data.classes, self.name)
        b, c = len(self.scores.names), len(context.data.classes)
        self.k = max(1, math.ceil(options.top_percent / 100 * context.n_samples))  # an upper bound per class
        self.best = torch.full((b, c, self.k), -math.inf, dtype=torch.float64)
        self.best_index = torch.full((b, c, self.k), -1, dtype=torch.long)
        self.count = torch.zeros(c, dtype=torch.long)
        self.thumbs = None  # [B, C, T, *input shape], made at the first batch

    def update(self, batch: Batch) -> None:
        if batch.targets is None:
            return
        y = batch.targets.long()
        _, confidence = self.scores(batch, y)  # [N, B]
        confidence, y, index, x = confidence.double().cpu(), y.cpu(), batch.index.cpu(), batch.inputs.detach().cpu()
        if self.thumbs is None and self.options.thumbnails:
            self.thumbs = torch.zeros(*self.best.shape[:2], self.options.thumbnails, *x.shape[1:])
        for c in y.unique().tolist():
            members = y == c
            self.count[c] += int(members.sum())
            self._merge(c, confidence[members].T, index[members], x[members])

    def _merge(self, c: int, confidence: torch.Tensor, index: torch.Tensor, images: torch.Tensor) -> None:
        """Fold one class's new candidates (``confidence`` ``[K, n]``) into the running top-k lists."""
        k = self.best.shape[2]
        pool = torch.cat([self.best[:, c], confidence], 1)  # [K, k + n]
        pool_index = torch.cat([self.best_index[:, c], index.expand(pool.shape[0], -1)], 1)
        top = pool.topk(k, dim=1)
        if self.thumbs is not None:
            t = self.thumbs.shape[2]
            candidates = torch.cat([self.thumbs[:, c], images.expand(pool.shape[0], *images.shape)], 1)
            order = torch.cat([self.best[:, c, :t], confidence], 1).topk(t, dim=1).indices
            self.thumbs[:, c] = candidates[torch.arange(pool.shape[0])[:, None], order]
        self.best[:, c], self.best_index[:, c] = top.values, pool_index.gather(1, top.indices)

    def finalize(self) -> xr.Dataset:
        per_class = np.maximum(1, np.ceil(self.options.top_percent / 100 * self.count.numpy())).astype(int)
        rank = np.arange(self.best.shape[2])
        keep = (rank[None, :] < per_class[:, None])[None] & (self.best_index.numpy() >= 0)  # [K, C, k]
        index = np.where(keep, self.best_index.numpy(), -1)
        confidence = np.where(keep, self.best.numpy(), np.nan)
        ids = np.asarray(self.context.data.sample_ids[: self.context.n_samples], dtype=object)
        sample_id = np.where(index >= 0, ids[np.maximum(index, 0)], "")
        ds = xr.Dataset(
            {
                "top_sample": (("branch", "cls", "rank"), index, {
                    "long_name": "sample position of the rank-th most confident sample (-1: none)"}),
                "top_sample_id": (("branch", "cls", "rank"), sample_id.astype(object), {
                    "long_name": "dataset id of that sample"}),
                "top_score": (("branch", "cls", "rank"), confidence, self._score_attrs()),
                "top_count": ("cls", per_class, {"long_name": "samples kept per branch", "units": "samples"}),
            },
            coords={"branch": ("branch", np.array(self.scores.names, dtype=object)), "rank": ("rank", rank),
                    **class_coords(self.context)},
            attrs={"top_percent": self.options.top_percent, "mode": self.scores.mode},
        )
        if self.thumbs is not None:
            dims = ("branch", "cls", "thumb", *("channel", "y", "x")[-(self.thumbs.dim() - 3):])
            ds["thumbnail"] = (dims, self.thumbs.numpy().astype(np.float32), {
                "long_name": "input of the thumb-th most confident sample", "units": "input units"})
            ds = ds.assign_coords(thumb=("thumb", np.arange(self.thumbs.shape[2])))
        return ds

    def _score_attrs(self) -> dict:
        if self.scores.mode == "classifier":
            return {"long_name": "confidence in the true class, branch alone", "units": "probability"}
        return {"long_name": "branch response norm", "units": "output units"}

    def summary(self, ds: xr.Dataset) -> dict:
        return {"kept per (branch, class)": f"top {ds.attrs['top_percent']:g}% "
                f"({int(ds.top_count.min())}-{int(ds.top_count.max())} samples)",
                f"mean {ds.top_score.attrs['long_name']} of the kept samples":
                    round(float(np.nanmean(ds.top_score.values)), 4)}


probekit_register_analyses, probekit_plot = analysis_hooks(
    IntraClass, "probekit_plugins.intra_class_plot:plot_intra_class")
