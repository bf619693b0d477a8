"""``intra-class``: which samples of a class each branch is most confident about (paper Fig. 8).

Per (branch, class), over the samples of that class: the top ``top_percent``
percent by the branch's confidence when it acts alone (softmax(v_k(x))[y];
for branches that are not classifiers, e.g. grouped convs, by the norm of the
branch's response: ``attrs['mode'] == 'responses'``),
as sample positions, ids and scores. Streaming: a running top-k of sample
positions per (branch, class), merged batch by batch with ``torch.topk``. At
the end the best ``thumbnails`` of each list are read back from the data, once
per distinct sample and shrunk to at most 64 px, for the report.

Evidence (:mod:`probekit_plugins.intra_class.evidence`): per layer and class, ``overlap`` (mean Jaccard index of
the branches' top lists) against exchanging the branches within every sample: ``overlap_p`` small means the
branches lead on different samples of the class. The per-sample scores are kept (``sample_score``) for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import xarray as xr

from probekit.api import (add_evidence, Analysis, analysis_hooks, Batch, BranchScores, class_coords,
                          describe_p, evidence_rng, EvidenceOptions, ProbekitError, SIGNIFICANCE)
from probekit_plugins.intra_class import evidence


THUMB_SIZE = 64


def _shrink(image: torch.Tensor) -> np.ndarray:
    """An input image ``[C, H, W]`` scaled down (antialiased) so that neither side exceeds ``THUMB_SIZE``."""
    if image.dim() != 3 or max(image.shape[1:]) <= THUMB_SIZE:
        return image.numpy()
    scale = THUMB_SIZE / max(image.shape[1:])
    size = [max(1, round(side * scale)) for side in image.shape[1:]]
    return torch.nn.functional.interpolate(image[None], size=size, mode="bilinear", antialias=True)[0].numpy()


@dataclass
class IntraClassOptions(EvidenceOptions):
    """``top_percent``: share of each class kept per branch (percent); ``thumbnails``: images kept per list; and
    the evidence's options (:class:`probekit.api.EvidenceOptions`; 199 permutations by default)."""

    top_percent: float = 2.0
    thumbnails: int = 8
    permutations: int = field(default=199, metadata={"help": "branch exchanges of the null (0: no test)"})

    def check(self):
        super().check()
        if not 0 < self.top_percent <= 100 or self.thumbnails < 0:
            raise ProbekitError("intra-class.top_percent must be in (0, 100] and intra-class.thumbnails >= 0")


def ranked(values: torch.Tensor, index: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest ``values`` along the last dim with their ``index``, ties broken by the smaller index, so
    the result does not depend on the order samples arrived in: ``[..., m] -> [..., k]``."""
    by_index = torch.argsort(index, dim=-1, stable=True)
    values, index = values.gather(-1, by_index), index.gather(-1, by_index)
    by_value = torch.argsort(values, dim=-1, descending=True, stable=True)[..., :k]
    return values.gather(-1, by_value), index.gather(-1, by_value)


class IntraClass(Analysis):
    name = "intra-class"
    plot = "probekit_plugins.intra_class.plot:plot_intra_class"
    needs_classes = True
    merge_rules = {"leaders": "custom", "count": "sum", "targets": "rows"}
    description = "per branch and class, the samples the branch alone is most confident about"
    Options = IntraClassOptions

    def __init__(self, context, options):
        super().__init__(context, options)
        self.scores = BranchScores(context.branchset, context.data.classes, self.name)
        b, c = len(self.scores.names), len(context.data.classes)
        self.k = max(1, math.ceil(options.top_percent / 100 * context.n_samples))  # an upper bound per class
        # per (branch, class): the k best confidences so far, descending, and their sample positions (-1: none)
        self.leaders = (torch.full((b, c, self.k), -math.inf, dtype=torch.float64),
                        torch.full((b, c, self.k), -1, dtype=torch.long))
        self.count = torch.zeros(c, dtype=torch.long)
        self.targets = np.full(context.n_samples, -1, dtype=np.int64)
        self.sample_score = context.sample_array(self.name, "sample_score", ("sample", "branch"), (b,), np.float32,
                                                 {**self._score_attrs(), "description": "per sample, for the null"})

    def update(self, batch: Batch) -> None:
        if batch.targets is None:
            return
        y = batch.targets.long()
        _, confidence = self.scores(batch, y)  # [N, B]
        confidence, y, index = confidence.double().cpu(), y.cpu(), batch.index.cpu()
        start = int(index[0])
        self.sample_score.write(start, confidence.float().numpy())
        self.targets[start:start + len(y)] = y.numpy()
        for c in y.unique().tolist():
            members = y == c
            self.count[c] += int(members.sum())
            self._merge(c, confidence[members].T, index[members])

    def _merge(self, c: int, confidence: torch.Tensor, index: torch.Tensor) -> None:
        """Fold one class's new candidates (``confidence`` ``[K, n]``) into the running top-k lists."""
        best, best_index = self.leaders
        pool = torch.cat([best[:, c], confidence], 1)  # [K, k + n]
        pool_index = torch.cat([best_index[:, c], index.expand(pool.shape[0], -1)], 1)
        best[:, c], best_index[:, c] = ranked(pool, pool_index, self.k)

    def merge_leaders(self, mine, theirs):
        """Two shards' top-k lists: the top k of their union (same order as one pass over all samples)."""
        return ranked(torch.cat([mine[0], theirs[0]], -1), torch.cat([mine[1], theirs[1]], -1), self.k)

    def _thumbnails(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The distinct samples among the best ``thumbnails`` of each list, read back from the data.

        Returns their positions, their images ``[S, *input]`` (at most ``THUMB_SIZE`` pixels a side) and,
        per (branch, class, thumb), the row of its image (-1 for none).
        """
        shown = index[:, :, : min(self.options.thumbnails, index.shape[2])]
        positions = np.unique(shown[shown >= 0])
        samples = [self.context.data.dataset[int(i)][0] for i in positions]
        if any(not isinstance(x, torch.Tensor) for x in samples):  # token sequences (dicts): no thumbnails
            return positions[:0], np.zeros((0, 1, 1, 1), np.float32), np.full(shown.shape, -1)
        images = [x.float() for x in samples]
        images = [_shrink(image) for image in images]
        rows = np.where(shown >= 0, np.searchsorted(positions, np.maximum(shown, 0)), -1)
        return positions, np.stack(images) if images else np.zeros((0, 1, 1, 1), np.float32), rows

    def finalize(self) -> xr.Dataset:
        per_class = np.maximum(1, np.ceil(self.options.top_percent / 100 * self.count.numpy())).astype(int)
        best, best_index = (t.numpy() for t in self.leaders)
        rank = np.arange(best.shape[2])
        keep = (rank[None, :] < per_class[:, None])[None] & (best_index >= 0)  # [K, C, k]
        index = np.where(keep, best_index, -1)
        confidence = np.where(keep, best, np.nan)
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
        if self.options.thumbnails:
            positions, images, rows = self._thumbnails(index)
            dims = ("thumb_sample", *("channel", "y", "x")[-(images.ndim - 1):])
            ds = ds.assign_coords(thumb=("thumb", np.arange(rows.shape[2])), thumb_sample=("thumb_sample", positions))
            ds["thumbnail"] = (dims, images.astype(np.float32), {
                "long_name": "input of a listed sample, shrunk to at most 64 px a side", "units": "input units"})
            ds["thumbnail_row"] = (("branch", "cls", "thumb"), rows, {
                "long_name": "row of thumbnail showing the thumb-th listed sample (-1: none)"})
        if self.sample_score.in_memory:
            ds[self.sample_score.name] = (self.sample_score.dims, self.sample_score.values(), self.sample_score.attrs)
        return self._with_evidence(ds)

    def _with_evidence(self, ds: xr.Dataset) -> xr.Dataset:
        """The overlap of the branches' top lists per layer and class, against branch exchange."""
        o, layers = self.options, list(self.scores.layer_slices())
        self.sample_score.checkpoint()
        seen = self.targets >= 0
        values = self.sample_score.read(0, self.context.n_samples)[seen].astype(np.float64)
        found = evidence.evidence(values, self.targets[seen], len(self.count), [part for _, part in layers],
                                  o.top_percent / 100, o.permutations, o.resamples, o.level,
                                  evidence_rng(self.context.seed, self.name))
        ds = ds.assign_coords(layer=("layer", np.array([layer.name for layer, _ in layers], dtype=object))).assign(
            overlap=(("layer", "cls"), found["observed"], {
                "long_name": "overlap of the branches' top lists", "units": "1",
                "description": "mean Jaccard index over the pairs of the layer's branches of their top "
                               f"{o.top_percent:g}% samples of the class (1: the same samples, 0: disjoint)"}))
        return add_evidence(ds, "overlap", ("layer", "cls"), found, o, alternative="less", permuted=(
            "the scores of the branches of each layer exchanged independently within every sample"))

    def _score_attrs(self) -> dict:
        if self.scores.mode == "classifier":
            return {"long_name": "confidence in the true class, branch alone", "units": "probability"}
        return {"long_name": "branch response norm", "units": "output units"}

    def summary(self, ds: xr.Dataset) -> dict:
        return {"kept per (branch, class)": f"top {ds.attrs['top_percent']:g}% "
                f"({int(ds.top_count.min())}-{int(ds.top_count.max())} samples)",
                f"mean {ds.top_score.attrs['long_name']} of the kept samples":
                    round(float(np.nanmean(ds.top_score.values)), 4)} | _overlap_summary(ds)


def _overlap_summary(ds: xr.Dataset) -> dict:
    """Mean overlap beside its null, and how many (layer, class) cells overlap less than branch exchange gives."""
    if "overlap_p_adjusted" not in ds:
        return {}
    below = int((ds.overlap_p_adjusted.values < SIGNIFICANCE).sum())
    best = np.unravel_index(np.nanargmin(ds.overlap_p_adjusted.values), ds.overlap_p_adjusted.shape)
    return {"overlap of the branches' top lists (branch exchange)": (
                f"{float(np.nanmean(ds.overlap.values)):.3f} ({float(np.nanmean(ds.overlap_null.values)):.3f})"),
            "classes whose branches lead on different samples": (
                f"{below} of {ds.overlap.size} (layer, class) cells ({ds.overlap_p_adjusted.attrs['correction']}-"
                f"adjusted p < {SIGNIFICANCE}; lowest: {ds.class_name.values[best[1]]}, "
                f"{describe_p(float(ds.overlap_p_adjusted.values[best]))})")}


probekit_register_analyses, probekit_plot = analysis_hooks(IntraClass)
