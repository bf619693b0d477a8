"""``similarity``: linear CKA between the branches, heads or experts of each layer (:mod:`.cka`), and with
``reference=SPEC`` between each branch and every branch of the same layer in another model.

Per layer, ``cka`` ``[branch, branch_other]`` is exact linear CKA of the branches' flattened responses when the
layer's K responses hold at most ``max_features`` values together (the ``[K D, K D]`` cross-covariance is streamed),
and the unbiased minibatch estimate otherwise; ``cka_minibatch`` is the minibatch estimate for every layer (it
depends on the batch size). Entries across layers are NaN. ``mean_cka`` is each layer's mean CKA between distinct
branches.

Evidence: each layer's ``mean_cka`` is tested against every branch's samples shuffled independently (greater than
chance), and bootstrapped over samples, on a ``sketch``-value sketch of each response kept per sample (exact when
a response has at most that many values), as the covariance node does.

``reference``: any ``--model`` spec (another seed, a checkpoint, a fine-tune; loaded under the same safety rules)
whose branches are found the same way and whose layers have the same names. The reference runs on every batch,
and ``cka_reference`` ``[branch, reference_branch]`` compares the two; a Hungarian matching of each layer (the
assignment that maximises the summed CKA) gives ``match`` (the reference branch paired with each branch) and
``match_cka``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import xarray as xr

from probekit.api import (add_evidence, Analysis, analysis_hooks, Batch, branch_coords, compensated_add,
                          compensated_value, discover_branches, evidence_rng, EvidenceOptions, layer_coords, load_model,
                          ProbekitError, responses_of)
from probekit_plugins.covariance.evidence import projection, sketched

from . import evidence

from .cka import cross_cka, cross_products, exact_cka, minibatch_cka, minibatch_hsic, self_energy


NULL = "the samples of every branch shuffled independently (on the responses' sketch)"


@dataclass
class SimilarityOptions(EvidenceOptions):
    """``max_features``: the most values a layer's K responses may hold together for exact CKA (its
    cross-covariance takes ``8 (K D)^2`` bytes); wider layers get the minibatch estimate. ``reference``: a model
    to compare with, branch by branch. ``sketch``: values kept per branch response and sample for the null and
    the interval of ``mean_cka``; and the evidence's options (199 permutations by default, one test per layer)."""

    max_features: int = field(default=4096, metadata={"help": "K x D at most for exact CKA (else the minibatch "
                                                                "estimate)"})
    reference: str = field(default="", metadata={"help": "a --model spec to compare with, branch by branch"})
    sketch: int = field(default=8, metadata={"help": "values kept per branch response and sample for the null"})
    permutations: int = field(default=199, metadata={"help": "shuffles of the null (0: no test)"})

    def check(self):
        super().check()
        if self.sketch < 1:
            raise ProbekitError(f"similarity.sketch must be >= 1, not {self.sketch}")
        if self.max_features < 1:
            raise ProbekitError(f"similarity.max_features must be >= 1, not {self.max_features}")


def _zeros(rows: int, cols: int, device) -> torch.Tensor:
    return torch.zeros(rows, cols, dtype=torch.float64, device=device)


class Similarity(Analysis):
    name = "similarity"
    plot = "probekit_plugins.similarity.plot:plot_similarity"
    merge_rules = {"products": "compensated-sum", "sums": "compensated-sum", "hsic": "sum", "count": "sum",
                   "ref_products": "compensated-sum", "ref_sums": "compensated-sum", "cross": "compensated-sum",
                   "ref_hsic": "sum", "cross_hsic": "sum"}
    description = "linear CKA between the branches of each layer (exact, and the unbiased minibatch estimate)"
    Options = SimilarityOptions

    def __init__(self, context, options):
        super().__init__(context, options)
        layers, sizes = context.branchset.layers, context.response_sizes
        self.exact = {layer.name for layer in layers
                      if sizes.get(layer.name) and len(layer.branches) * sizes[layer.name] <= options.max_features}
        self.products, self.sums = {}, {}  # exact layers: compensated sums [2, K D, K D] and [2, K D]
        self.hsic = {layer.name: _zeros(len(layer.branches), len(layer.branches), context.device) for layer in layers}
        self.count = 0
        self.sketch = context.sample_array(self.name, "response_sketch", ("sample", "branch", "sketch"),
                                           (len(context.branchset), options.sketch), np.float32, {
                                               "long_name": "sketch of each branch's response per sample",
                                               "description": "the response itself (zero-padded) when it has at "
                                                              "most `sketch` values, else a Gaussian projection"}
                                           ) if options.permutations or options.resamples else None
        self.projections = {}  # layer name -> its sketch matrix, made from its response width at the first batch
        self.ref_products, self.ref_sums, self.cross, self.ref_hsic, self.cross_hsic = {}, {}, {}, {}, {}
        self.reference = self.reference_set = None
        if options.reference:
            self._load_reference(options.reference)

    def _load_reference(self, spec: str) -> None:
        self.reference = load_model(spec).module.to(self.context.device).eval()
        self.reference_set = discover_branches(self.reference)
        shared = {layer.name for layer in self.reference_set.layers} & set(self.hsic)
        if not shared:
            raise ProbekitError(f"similarity.reference={spec}: none of its layers ({self._names(self.reference_set)}) "
                                f"has the name of a probed layer ({self._names(self.context.branchset)})")
        for layer in self.reference_set.layers:
            if layer.name in shared:
                own = len(self.context.branchset.layers[self._index(layer.name)].branches)
                self.ref_hsic[layer.name] = _zeros(len(layer.branches), len(layer.branches), self.context.device)
                self.cross_hsic[layer.name] = _zeros(own, len(layer.branches), self.context.device)

    @staticmethod
    def _names(branchset) -> str:
        names = [layer.name for layer in branchset.layers]
        return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")

    def _index(self, name: str) -> int:
        return [layer.name for layer in self.context.branchset.layers].index(name)

    def update(self, batch: Batch) -> None:
        theirs = responses_of(self.reference, self.reference_set, batch.inputs) if self.reference is not None else {}
        if self.sketch is not None:
            self.sketch.write(int(batch.index[0]), np.concatenate([self._sketched(name, responses) for name, responses
                                                                   in batch.responses.items()], axis=1))
        for name, responses in batch.responses.items():  # [N, K, D]
            other = theirs.get(name) if name in self.cross_hsic else None
            exact = name in self.exact
            if exact:
                self.products[name] = compensated_add(self.products.get(name), cross_products(responses))
                self.sums[name] = compensated_add(self.sums.get(name), responses.flatten(1).double().sum(0))
            if (hsic := minibatch_hsic(responses)) is not None:
                self.hsic[name] += hsic
            if other is not None:
                self._add_reference(name, responses, other, exact)
        self.count += batch.index.shape[0]

    def _sketched(self, name: str, responses: torch.Tensor) -> np.ndarray:
        """``[N, K, sketch]`` of one layer's responses (its projection made at the first batch)."""
        if name not in self.projections:
            self.projections[name] = projection(responses.shape[2], self.options.sketch,
                                                self.context.seed + self._index(name))
        return sketched(responses, self.projections[name], self.options.sketch)

    def _add_reference(self, name: str, responses: torch.Tensor, other: torch.Tensor, exact: bool) -> None:
        """The reference's responses ``[N, J, D']`` of a shared layer, and their cross terms with ours."""
        if exact:
            self.ref_products[name] = compensated_add(self.ref_products.get(name), cross_products(other))
            self.ref_sums[name] = compensated_add(self.ref_sums.get(name), other.flatten(1).double().sum(0))
            self.cross[name] = compensated_add(self.cross.get(name), cross_products(responses, other))
        if (hsic := minibatch_hsic(other)) is not None:
            self.ref_hsic[name] += hsic
            self.cross_hsic[name] += minibatch_hsic(responses, other)

    def _exact_value(self, state: dict, name: str) -> np.ndarray:
        return compensated_value(state[name]).cpu().numpy()

    def finalize(self) -> xr.Dataset:
        b = len(self.context.branchset)
        cka, minibatch = np.full((b, b), np.nan), np.full((b, b), np.nan)
        methods, means = [], []
        for layer, part in self.context.branchset.layer_slices():
            minibatch[part, part] = minibatch_cka(self.hsic[layer.name].cpu().numpy())
            exact = layer.name in self.products
            cka[part, part] = exact_cka(self._exact_value(self.products, layer.name),
                                        self._exact_value(self.sums, layer.name), self.count,
                                        len(layer.branches)) if exact else minibatch[part, part]
            methods.append("exact" if exact else "minibatch")
            off = cka[part, part][~np.eye(len(layer.branches), dtype=bool)]
            means.append(float(np.nanmean(off)) if np.isfinite(off).any() else np.nan)
        coords = {**branch_coords(self.context), **branch_coords(self.context, "branch_other"),
                  **layer_coords(self.context)}
        ds = xr.Dataset({
            "cka": (("branch", "branch_other"), cka, {
                "long_name": "linear CKA between branch responses", "units": "1",
                "description": "exact (layer variable cka_method) or the unbiased minibatch estimate; NaN across "
                               "layers"}),
            "cka_minibatch": (("branch", "branch_other"), minibatch, {
                "long_name": "linear CKA, unbiased minibatch estimate (Nguyen et al. 2021)", "units": "1",
                "description": "from per-batch unbiased HSIC; depends on the batch size; NaN across layers"}),
            "mean_cka": ("layer", np.array(means), {"long_name": "mean CKA between distinct branches of the layer",
                                                    "units": "1"}),
            "cka_method": ("layer", np.array(methods, dtype=object), {"long_name": "how cka was computed"}),
        }, coords=coords, attrs={"n_samples": self.count, "max_features": self.options.max_features,
                                 "reference": self.options.reference or "none"})
        ds = self._with_evidence(ds)
        return self._with_reference(ds) if self.reference is not None else ds

    def _with_evidence(self, ds: xr.Dataset) -> xr.Dataset:
        """Per layer: the mean CKA between its branches against shuffled samples, with an interval (sketched)."""
        if self.sketch is None:
            return ds
        if self.sketch.in_memory:
            ds[self.sketch.name] = (self.sketch.dims, self.sketch.values(), self.sketch.attrs)
        self.sketch.checkpoint()
        sketch = self.sketch.read(0, self.context.n_samples)
        o, rng = self.options, evidence_rng(self.context.seed, self.name)
        found = [evidence.evidence(sketch[:, part], o.permutations, o.resamples, o.level, rng)
                 for _, part in self.context.branchset.layer_slices()]
        stacked = {key: np.stack([f[key] for f in found]) for key in found[0]}
        return add_evidence(ds, "mean_cka", ("layer",), stacked, o, permuted=NULL, alternative="greater",
                            resampled="samples (on the responses' sketch)")

    def _with_reference(self, ds: xr.Dataset) -> xr.Dataset:
        """``cka_reference`` against the reference's branches, and the Hungarian ``match`` within each layer."""
        from scipy.optimize import linear_sum_assignment

        theirs = self.reference_set
        columns = {layer.name: part for layer, part in theirs.layer_slices()}
        values = np.full((len(self.context.branchset), len(theirs)), np.nan)
        match = np.full(len(self.context.branchset), "", dtype=object)
        match_cka = np.full(len(self.context.branchset), np.nan)
        names = np.array(theirs.names, dtype=object)
        for layer, part in self.context.branchset.layer_slices():
            if layer.name not in self.cross_hsic:
                continue
            block = self._reference_block(layer)
            values[part, columns[layer.name]] = block
            rows, cols = linear_sum_assignment(np.nan_to_num(block, nan=-1.0), maximize=True)
            match[part.start + rows] = names[columns[layer.name]][cols]
            match_cka[part.start + rows] = block[rows, cols]
        return ds.assign_coords(
            reference_branch=("reference_branch", names),
            reference_branch_layer=("reference_branch", np.array(theirs.layer_of_branch, dtype=object)),
        ).assign(
            cka_reference=(("branch", "reference_branch"), values, {
                "long_name": "linear CKA with the reference model's branches", "units": "1",
                "description": "same-layer pairs only (exact or minibatch as cka); NaN elsewhere"}),
            match=("branch", match, {"long_name": "the reference branch matched to the branch",
                                     "description": "Hungarian matching that maximises the layer's summed CKA"}),
            match_cka=("branch", match_cka, {"long_name": "CKA with the matched reference branch", "units": "1"}),
        )

    def _reference_block(self, layer) -> np.ndarray:
        """``[K, J]`` CKA between the layer's branches and the reference's, exact when both sides were."""
        name = layer.name
        if name in self.cross:
            k, j = len(layer.branches), self.cross_hsic[name].shape[1]
            own, theirs = self._exact_value(self.products, name), self._exact_value(self.ref_products, name)
            sums, ref_sums = self._exact_value(self.sums, name), self._exact_value(self.ref_sums, name)
            return cross_cka(self._exact_value(self.cross, name), sums, ref_sums,
                             self_energy(own, sums, self.count, k), self_energy(theirs, ref_sums, self.count, j),
                             self.count)
        return minibatch_cka(self.cross_hsic[name].cpu().numpy(), self.hsic[name].cpu().numpy(),
                             self.ref_hsic[name].cpu().numpy())

    def summary(self, ds: xr.Dataset) -> dict:
        out = {f"mean CKA in {layer} ({method})": round(float(value), 4)
               for layer, value, method in zip(ds.layer.values[:8], ds.mean_cka.values, ds.cka_method.values,
                                               strict=False)}
        if "match_cka" in ds:
            out["mean CKA with the matched reference branch"] = round(float(np.nanmean(ds.match_cka.values)), 4)
        return out


probekit_register_analyses, probekit_plot = analysis_hooks(Similarity)
