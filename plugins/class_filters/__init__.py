"""``class-filters``: which features each class relies on, how concentrated they are, and a classifier that uses
only them (class-specific filters, Badola et al., "Decomposing the deep"; implemented from the definitions, no
code copied).

The features ``h(x) >= 0`` are, on a summed classifier (the default), the input of each branch's final linear
layer, concatenated over branches (``feature_branch`` names the owner of each); on any model, with
``class-filters.layer=PATH``, the output of that module (after ``class-filters.activation=relu`` when the model's
ReLU is functional), averaged over space: e.g. ``layer1.2.bn1`` with ``activation=relu``, the reference's ReLU in
the middle of a stage's last block of ``resnet20-cifar10``. Streaming state, merged exactly across processes: per
class the top-k counts, exact histograms of ``n_k(x)`` (so the median merges exactly), feature sums; the features
themselves are stored per sample and read back once at the end:

* ``count_c[j]``: class-c samples whose k largest features contain j; ``I_c`` = the k most counted;
* ``n_k(x)``: by default the reference's, the number of largest features whose cumulative share of
  ``||h(x)||_1`` is still below fraction k (``n_k=reaching``: the number it takes to reach k, one more);
  ``Psi_c(k) = (D - median n_k) / D``;
* class selectivity index per feature ``(mu_max - mu_rest) / (mu_max + mu_rest + 1e-7)``;
* between the classes' top-k frequency distributions, their Jensen-Shannon divergence (bits) and the reference's
  "mutual information" score (nats) (:mod:`stats`);
* where a linear layer reads the features (the model's last ``nn.Linear`` of matching width, or
  ``class-filters.head=PATH``), the decomposed head ``logit_c = sum_{j in I_c} W_cj h_j + b_c`` and its accuracy
  for each k, and with ``finetune_epochs`` > 0 the same head fine-tuned (:mod:`finetune`); elsewhere these are
  left out, with a note in the attrs;
* branch share: the share of each class's filters owned by each branch.

Evidence (:mod:`probekit_plugins.class_filters.evidence`): ``selectivity_p`` against shuffled labels (corrected
over the features), ``selectivity_null`` and ``selectivity_ci`` (bootstrap over samples).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import xarray as xr
from torch import nn

from probekit.api import (add_evidence, Analysis, analysis_hooks, Batch, class_coords, classifier_layer, describe_p,
                          evidence_rng, EvidenceOptions, glob_regex, ProbekitError, sample_coords, SIGNIFICANCE, Tap)
from probekit_plugins.class_filters import evidence, finetune, stats

TAP = "class-filters"
DEFAULT_K = (1, 5, 10, 20, 50)
HEAD_TOLERANCE = 1e-4  # relative error above which a head found by width alone is not the features' head
N_K_RULES = {"below": "the largest features whose cumulative share of the L1 norm is below fraction k: the "
                      "reference's n_k",
             "reaching": "the largest features it takes to reach fraction k of the L1 norm"}
JS_ATTRS = {"long_name": "Jensen-Shannon divergence between class filter distributions", "units": "bit",
            "description": "of the two classes' top-k frequencies: the mutual information between the class (of "
                           "the pair, equally likely) and a filter index drawn from it; 0: the same filters, 1: "
                           "disjoint"}
READ_ROWS = 4096  # features read back per step at the end


@dataclass
class ClassFiltersOptions(EvidenceOptions):
    """``layer``: a module path whose output (pooled over space) are the features, instead of the summed
    classifier's branch features; ``activation``: ``relu`` applies a ReLU to that output first (for a model whose
    ReLUs are functions, not modules), ``none`` (the default) takes it as it is; ``head``: the linear layer that
    reads the features (default: the model's last ``nn.Linear`` of matching width; none: no decomposed head);
    ``k``: filter counts, integers, or fractions of the D features below 1 (0.05: 5% of them, at least 1);
    ``fractions``: the mass fractions of ``Psi``; ``n_k``: ``below`` (the reference's count) or ``reaching``;
    ``finetune_epochs`` (0: no fine-tune), ``finetune_lr``, ``finetune_batch``: the decomposed head's fine-tune;
    and the evidence's options (:class:`probekit.api.EvidenceOptions`)."""

    layer: str = field(default="", metadata={
        "help": "a module whose output (averaged over space) are the features (default: the summed classifier's "
                "branch features)"})
    activation: Literal["none", "relu"] = field(default="none", metadata={
        "help": "relu: apply a ReLU to the layer's output before pooling (for functional ReLUs); none: as it is"})
    head: str = field(default="", metadata={
        "help": "the nn.Linear reading the features (default: the model's last one of matching width, when it gives "
                "the model's output from them)"})
    k: list[float] | None = field(default=None, metadata={
        "help": "filter counts: integers, or fractions of the D features below 1 (default: those of 1, 5, 10, 20, "
                "50 up to D)"})
    fractions: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
                                   metadata={"help": "the mass fractions of Psi, in (0, 1]"})
    n_k: Literal["below", "reaching"] = field(default="below", metadata={
        "help": "below (the reference's: the largest features whose cumulative share is below the fraction) or "
                "reaching (the features it takes to reach it: one more)"})
    finetune_epochs: int = field(default=0, metadata={
        "help": "epochs of Adam on the decomposed head's weights (the reference's default: 100); 0: none"})
    finetune_lr: float = field(default=2e-4, metadata={"help": "the fine-tune's Adam learning rate (the reference's)"})
    finetune_batch: int = field(default=128, metadata={"help": "the fine-tune's batch size (the reference's)"})
    correction: str = field(default="bh", metadata={
        "help": "correction over the features: bh (false discovery rate, the default for a screen of many "
                "features), holm or none"})

    def check(self):
        super().check()
        if self.k is not None and (not self.k or min(self.k) <= 0 or any(k > 1 and k != int(k) for k in self.k)):
            raise ProbekitError(f"class-filters.k must be integers >= 1 or fractions in (0, 1), not {self.k}")
        if not self.fractions or not all(0 < f <= 1 for f in self.fractions):
            raise ProbekitError(f"class-filters.fractions must be in (0, 1], not {self.fractions}")
        if self.finetune_epochs < 0 or self.finetune_lr <= 0 or self.finetune_batch < 1:
            raise ProbekitError("class-filters.finetune_epochs must be >= 0, finetune_lr > 0 and finetune_batch >= 1")

    def requested(self, features: int) -> list[float]:
        """The k asked for: ``k``, or the default's counts up to ``features``."""
        return self.k if self.k is not None else [k for k in DEFAULT_K if k <= features]

    def counts_of(self, features: int) -> list[int]:
        """Each k as a number of features (a fraction below 1 of ``features``, rounded, at least 1)."""
        resolved = [int(k) if k >= 1 else max(1, round(k * features)) for k in self.requested(features)]
        if len(set(resolved)) != len(resolved) or max(resolved) > features:
            raise ProbekitError(f"class-filters.k={self.k} must give distinct counts of at most the {features} "
                                f"features, not {resolved}")
        return resolved


def _last_linear(module: nn.Module) -> str | None:
    """The path (relative to ``module``) of its last ``nn.Linear``, or ``None``."""
    found = [path for path, m in module.named_modules() if isinstance(m, nn.Linear)]
    return found[-1] if found else None


class FeatureSource:
    """Where the features come from and the linear head that reads them, if any: ``weight [C, D]``, ``bias [C]``
    (``None`` without a head), ``owner`` (the branch, or module, of each feature)."""

    def __init__(self, context, options: ClassFiltersOptions):
        model = self.model = context.model
        self.relu = options.activation == "relu"
        self.weight = self.bias = self.owner = None  # known at the first batch, from the feature width
        self.head_path, self.head_note = options.head, ""
        if options.layer:
            self.tap = Tap(options.layer)
            paths = [p for p, _ in model.named_modules() if p and glob_regex(options.layer).fullmatch(p)]
            if len(paths) != 1:
                raise ProbekitError(f"class-filters.layer={options.layer!r} must name one module, not {len(paths)}")
            self.keys, self.layer = paths, None
            return
        self.layer = classifier_layer(context.branchset)
        if self.layer is None:
            raise ProbekitError("class-filters needs a summed classifier at the model's root, or the features' "
                                "module: class-filters.layer=PATH (e.g. layer3 of resnet20-cifar10)")
        relative = _last_linear(model.get_submodule(self.layer.modules[0]))
        if relative is None:
            raise ProbekitError(f"class-filters: branch {self.layer.branches[0]} has no nn.Linear to read")
        self.tap = Tap(relative, "input", per_branch=True)
        self.keys = list(self.layer.branches)
        heads = [model.get_submodule(f"{m}.{relative}") for m in self.layer.modules]
        self.weight = torch.cat([h.weight.detach() for h in heads], 1).double().cpu().numpy()
        self.bias = sum(h.bias.detach().double() for h in heads if h.bias is not None).cpu().numpy()
        self.owner = np.concatenate([[b] * h.in_features for b, h in zip(self.keys, heads, strict=True)])

    @property
    def has_head(self) -> bool:
        return self.weight is not None

    def features(self, batch: Batch) -> torch.Tensor:
        """``[N, D]`` non-negative features of a batch."""
        found = batch.taps[TAP]
        parts = [found[key].clamp(min=0) if self.relu else found[key] for key in self.keys]
        parts = [p.mean(dim=tuple(range(2, p.dim()))) if p.dim() > 2 and self.layer is None else p.flatten(1)
                 for p in parts]
        h = torch.cat(parts, 1).double()
        if self.owner is None:
            self.find_head(h.shape[1])
        if bool((h < 0).any()):
            raise ProbekitError(f"class-filters needs non-negative features; {', '.join(self.keys[:2])} gives "
                                "negative values (class-filters.activation=relu applies a ReLU first)")
        return h

    def find_head(self, width: int) -> None:
        """The head reading ``width`` features: ``head=PATH``, else the model's last ``nn.Linear`` of that width,
        else none (with :attr:`head_note` saying so)."""
        model = self.model
        self.owner = np.array([self.keys[0]] * width, dtype=object)
        candidates = [p for p, m in model.named_modules() if isinstance(m, nn.Linear) and m.in_features == width]
        path = self.head_path or (candidates[-1] if candidates else None)
        if path is None:
            self.head_note = (f"no nn.Linear reads the {width} features (name one with class-filters.head=PATH): "
                              "the decomposed head and its accuracy are left out")
            return
        head = model.get_submodule(path)
        if not isinstance(head, nn.Linear) or head.in_features != width:
            raise ProbekitError(f"class-filters.head={path!r} is not an nn.Linear reading {width} features")
        self.weight = head.weight.detach().double().cpu().numpy()
        self.bias = (head.bias.detach().double().cpu().numpy() if head.bias is not None
                     else np.zeros(head.out_features))

    def logit_error(self, h: np.ndarray, batch: Batch) -> float:
        """Largest relative gap between the head on every feature of ``h [N, D]`` and what it must reproduce (the
        sum of the branch outputs, or the model's output). A head found by width alone that does not reproduce the
        output reads other features: it is dropped, with a note (``head=PATH`` keeps any head)."""
        reference = (batch.responses[self.layer.name].sum(1) if self.layer is not None
                     else batch.outputs).double().cpu().numpy()
        scale = max(float(np.abs(reference).max()), 1e-12)
        error = float(np.abs(h @ self.weight.T + self.bias - reference).max()) / scale
        if error > HEAD_TOLERANCE and self.layer is None and not self.head_path:
            self.weight = self.bias = None
            self.head_note = (f"the model's last nn.Linear reading {h.shape[1]} features does not give its output "
                              f"from these (relative error {error:.2g}): the decomposed head and its accuracy are "
                              "left out (name a head with class-filters.head=PATH)")
            return 0.0
        return error


class ClassFilters(Analysis):
    name = "class-filters"
    plot = "probekit_plugins.class_filters.plot:plot_class_filters"
    needs_classes = True
    needs_targets = True
    merge_rules = {"counts": "sum", "histogram": "sum", "class_sum": "sum", "class_count": "sum",
                   "targets": "rows", "logit_error": "max"}
    description = ("class-specific filters: top-k counts, Psi, selectivity, divergences between classes' filters, "
                   "decomposed head")
    Options = ClassFiltersOptions

    def __init__(self, context, options):
        super().__init__(context, options)
        if context.model is None:
            raise ProbekitError("class-filters needs the model")
        self.source = FeatureSource(context, options)
        self.taps = {TAP: self.source.tap}
        self.n_classes = len(context.data.classes)
        self.counts = self.histogram = self.class_sum = None  # sized at the first batch (D features)
        self.class_count = np.zeros(self.n_classes, dtype=np.int64)
        self.targets = None
        self.logit_error = 0.0
        self.features = None
        self._read_back: np.ndarray | None = None  # the features read back at the end, once

    def _start(self, width: int) -> None:
        """Size the state for ``width`` features (unless a resumed run restored it) and open the features array."""
        self.ks = self.options.counts_of(width)
        c = self.n_classes
        if self.counts is None:
            self.counts = np.zeros((c, len(self.ks), width), dtype=np.int64)
            self.histogram = np.zeros((c, len(self.options.fractions), width + 1), dtype=np.int64)
            self.class_sum = np.zeros((c, width))
        self.features = self.context.sample_array(self.name, "features", ("sample", "feature"), (width,), np.float32,
                                                  {"long_name": "features h(x)", "units": "activation",
                                                   "description": "the non-negative features the statistics use"})

    def update(self, batch: Batch) -> None:
        h_t = self.source.features(batch)
        if self.features is None:
            self._start(h_t.shape[1])
        h, y = h_t.cpu().numpy(), batch.targets.long().cpu().numpy()
        start = int(batch.index[0])
        self.features.write(start, h.astype(np.float32))
        if self.targets is None:
            self.targets = np.zeros(self.context.n_samples, dtype=np.int64)
        self.targets[start:start + len(y)] = y
        np.add.at(self.class_count, y, 1)
        np.add.at(self.class_sum, y, h)
        for i, k in enumerate(self.ks):
            rows = np.repeat(y, k)
            np.add.at(self.counts[:, i], (rows, stats.top_k(h, k).ravel()), 1)
        for i, fraction in enumerate(self.options.fractions):
            np.add.at(self.histogram[:, i], (y, stats.mass_count(h, fraction, self.options.n_k)), 1)
        if self.source.has_head:
            self.logit_error = max(self.logit_error, self.source.logit_error(h, batch))
        if self.options.finetune_epochs and not self.source.has_head:  # refused at the first batch, not the end
            raise ProbekitError(f"class-filters.finetune_epochs needs a head: {self.source.head_note}")

    def _decomposed_accuracy(self, filters: dict[int, np.ndarray]) -> dict[int, float]:
        """Accuracy of the decomposed head for each k, over every probed sample (features read back in steps)."""
        correct = dict.fromkeys(filters, 0)
        n = self.context.n_samples
        self.features.checkpoint()
        for start in range(0, n, READ_ROWS):
            h = self.features.read(start, min(n, start + READ_ROWS)).astype(np.float64)
            y = self.targets[start:start + len(h)]
            for k, chosen in filters.items():
                logits = stats.decomposed_logits(h, self.source.weight, self.source.bias, chosen)
                correct[k] += int((logits.argmax(1) == y).sum())
        return {k: count / max(n, 1) for k, count in correct.items()}

    def finalize(self) -> xr.Dataset:
        if self.counts is None:
            raise ProbekitError("class-filters saw no sample")
        width = self.counts.shape[2]
        if self.features is None:  # this process probed nothing itself (its state came from the others)
            self._start(width)
        if self.source.owner is None:
            self.source.find_head(width)
        ks, fractions = self.options.counts_of(width), list(self.options.fractions)
        filters = {k: stats.class_filters(self.counts[:, i], k) for i, k in enumerate(ks)}
        means = self.class_sum / np.maximum(self.class_count, 1)[:, None]
        median = stats.histogram_median(self.histogram)
        is_filter = np.zeros((len(ks), self.n_classes, width), dtype=bool)
        for i, k in enumerate(ks):
            np.put_along_axis(is_filter[i], filters[k], True, axis=1)
        owners = list(dict.fromkeys(self.source.owner.tolist()))
        owner_index = np.array([owners.index(o) for o in self.source.owner])
        share = np.stack([[np.bincount(owner_index[is_filter[i, c]], minlength=len(owners)) / k
                           for c in range(self.n_classes)] for i, k in enumerate(ks)])
        divergence = np.stack([stats.js_divergence(self.counts[:, i]) for i in range(len(ks))])
        reference_mi = np.stack([stats.reference_information(self.counts[:, i]) for i in range(len(ks))])
        classes = class_coords(self.context)
        return xr.Dataset(
            {
                "count": (("k", "cls", "feature"), self.counts.transpose(1, 0, 2), {
                    "long_name": "top-k count", "units": "samples",
                    "description": "class-c samples whose k largest features contain the feature"}),
                "is_filter": (("k", "cls", "feature"), is_filter, {
                    "long_name": "class filter", "description": "in I_c: the k most counted features of the class "
                                                                "(ties: the lower index)"}),
                "mass_histogram": (("cls", "fraction", "mass_count"), self.histogram, {
                    "long_name": "histogram of n_k(x)", "units": "samples",
                    "description": f"samples whose n_k(x) equals mass_count ({N_K_RULES[self.options.n_k]}); exact, "
                                   "so medians merge exactly", "n_k": self.options.n_k}),
                "median_mass_count": (("cls", "fraction"), median, {
                    "long_name": "median n_k(x)", "units": "features", "n_k": self.options.n_k}),
                "psi": (("cls", "fraction"), stats.psi(median, width), {
                    "long_name": "Psi_c(k)", "units": "1", "description": "(D - median n_k(x)) / D"}),
                "class_mean": (("cls", "feature"), means, {"long_name": "mean feature per class",
                                                           "units": "activation"}),
                "selectivity": ("feature", stats.selectivity(means), {
                    "long_name": "class selectivity index", "units": "1",
                    "description": "(mu_max - mu_rest) / (mu_max + mu_rest + 1e-7) over class means"}),
                "mean_selectivity": ((), stats.selectivity(means).mean(), {
                    "long_name": "mean class selectivity index over the features", "units": "1",
                    "description": "the number the reference reports per layer"}),
                "js_divergence": (("k", "cls", "cls_other"), divergence, JS_ATTRS),
                "information": (("k", "cls", "cls_other"), divergence, {
                    **JS_ATTRS, "deprecated": "renamed js_divergence; this copy goes in 2.0"}),
                "reference_mi": (("k", "cls", "cls_other"), reference_mi, {
                    "long_name": "the reference's mutual-information score between class filter distributions",
                    "units": "nat", "description": "H(p_a) + H(p_b) - H(p_a + p_b) of the top-k frequencies "
                    "(each normalised; 1e-6 added where a distribution has a zero); not a mutual information: "
                    "the same filters give H(p_a); the reference reports its mean over pairs a != b"}),
                "branch_share": (("k", "cls", "owner"), share, {
                    "long_name": "share of the class's filters owned by the branch", "units": "1"}),
            },
            coords={"k": ("k", np.array(ks)),
                    "k_requested": ("k", np.array(self.options.requested(width), dtype=np.float64)),
                    "fraction": ("fraction", np.array(fractions)),
                    "feature": ("feature", np.arange(width)),
                    "feature_branch": ("feature", np.array(self.source.owner, dtype=object)),
                    "mass_count": ("mass_count", np.arange(width + 1)),
                    "owner": ("owner", np.array(owners, dtype=object)), **classes,
                    "cls_other": ("cls_other", classes["cls"][1]),
                    **sample_coords(self.context, self.targets)},
            attrs={"features": width, "activation": self.options.activation,
                   "source": self.source.tap.path if self.source.layer is None else "each branch's final linear input"},
        ).pipe(self._with_features).pipe(self._with_head, filters).pipe(self._with_evidence)

    def _with_head(self, ds: xr.Dataset, filters: dict[int, np.ndarray]) -> xr.Dataset:
        """The decomposed head's accuracy for each k (and fine-tuned), where a linear head reads the features;
        elsewhere the note that says why they are left out."""
        source, o, width = self.source, self.options, ds.attrs["features"]
        if not source.has_head:
            ds.attrs["decomposed_note"] = source.head_note
            return ds
        accuracy = self._decomposed_accuracy({**filters, width: np.tile(np.arange(width), (self.n_classes, 1))})
        ds["decomposed_accuracy"] = ("k", [accuracy[k] for k in ds.k.values], {
            "long_name": "decomposed head accuracy", "units": "1",
            "description": "logit_c = sum over I_c of W_cj h_j + b_c, no fine-tune"})
        ds.attrs.update(full_accuracy=accuracy[width], logit_error=self.logit_error)
        if o.finetune_epochs:
            tuned = finetune.finetuned_accuracy(self._all_features(), self.targets[:self.context.n_samples],
                                                source.weight, source.bias, filters, o.finetune_epochs,
                                                o.finetune_lr, o.finetune_batch,
                                                evidence_rng(self.context.seed, f"{self.name} fine-tune"))
            ds["finetuned_accuracy"] = ("k", [tuned[k] for k in ds.k.values], {
                "long_name": "fine-tuned decomposed head accuracy", "units": "1",
                "description": f"the decomposed head after {o.finetune_epochs} epochs of Adam (lr {o.finetune_lr}, "
                               f"batch {o.finetune_batch}) on its weights and biases, features fixed; cross-fitted: "
                               "each half of the samples scored by the head fine-tuned on the other half"})
        return ds

    def _all_features(self) -> np.ndarray:
        """``[N, D]`` every probed sample's features, read back once (the fine-tune and the evidence share it), in
        float64."""
        if self._read_back is None:
            n = self.context.n_samples
            self.features.checkpoint()
            self._read_back = np.concatenate([self.features.read(start, min(n, start + READ_ROWS))
                                              for start in range(0, n, READ_ROWS)]).astype(np.float64)
        return self._read_back

    def _with_evidence(self, ds: xr.Dataset) -> xr.Dataset:
        """Selectivity against shuffled labels, and its bootstrap interval."""
        o, n = self.options, self.context.n_samples
        if not (o.permutations or o.resamples):
            return ds  # no test and no interval: the features need not be read back again
        found = evidence.selectivity_evidence(self._all_features(), self.targets[:n], self.n_classes, o.permutations,
                                              o.resamples, o.level, evidence_rng(self.context.seed, self.name))
        shuffled = "the class labels shuffled over the samples"
        ds = add_evidence(ds, "selectivity", ("feature",), {key: value[:-1] for key, value in found.items()}, o,
                          permuted=shuffled)
        return add_evidence(ds, "mean_selectivity", (), {key: value[-1] for key, value in found.items()}, o,
                            permuted=shuffled, correction=None)

    def _with_features(self, ds: xr.Dataset) -> xr.Dataset:
        if self.features.in_memory:
            ds[self.features.name] = (self.features.dims, self.features.values(), self.features.attrs)
        return ds

    def summary(self, ds: xr.Dataset) -> dict:
        half = ds.psi.sel(fraction=0.5, method="nearest")
        off_pair = ~np.eye(ds.sizes["cls"], dtype=bool)

        def by_k(values) -> dict[int, float]:
            return {int(k): round(float(v), 4) for k, v in zip(ds.k.values, values, strict=True)}

        found = {
            "features": int(ds.attrs["features"]),
            "mean selectivity": _mean_selectivity(ds),
            "median selectivity": round(float(np.median(ds.selectivity.values)), 4),
            f"Psi at half the mass (median over classes; n_k {ds.median_mass_count.attrs['n_k']})":
                round(float(np.nanmedian(half.values)), 4),
            "reference MI score by k (nats, mean over pairs)": by_k(ds.reference_mi.values[:, off_pair].mean(1)),
        }
        if "decomposed_accuracy" in ds:
            found["decomposed accuracy by k"] = by_k(ds.decomposed_accuracy.values)
            found["accuracy with every feature"] = round(float(ds.attrs["full_accuracy"]), 4)
        else:
            found["decomposed head"] = ds.attrs["decomposed_note"]
        if "finetuned_accuracy" in ds:
            found["fine-tuned decomposed accuracy by k (cross-fitted)"] = by_k(ds.finetuned_accuracy.values)
        if "selectivity_p_adjusted" in ds:
            found["features more selective than with shuffled labels"] = (
                f"{int((ds.selectivity_p_adjusted.values < SIGNIFICANCE).sum())} of {ds.sizes['feature']} "
                f"({ds.selectivity_p_adjusted.attrs['correction']}-adjusted p < {SIGNIFICANCE}); null mean "
                f"{float(np.mean(ds.selectivity_null.values)):.4f}")
        return found


def _mean_selectivity(ds: xr.Dataset) -> str:
    """The mean CSI with its interval and its shuffled-label null, where the node has them."""
    text = f"{float(ds.mean_selectivity):.4f}"
    if "mean_selectivity_ci" in ds:
        low, high = ds.mean_selectivity_ci.values
        text += f" [{low:.4f}, {high:.4f}]"
    if "mean_selectivity_p" in ds:
        text += (f", shuffled labels {float(ds.mean_selectivity_null):.4f}, "
                 f"{describe_p(float(ds.mean_selectivity_p), label='p')}")
    return text


probekit_register_analyses, probekit_plot = analysis_hooks(ClassFilters)
