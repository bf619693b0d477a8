"""``similarity``: linear CKA between the branches, heads or experts of each layer (:mod:`.cka`), and with
``reference=SPEC`` between each branch and every branch of the same layer in another model.

Per layer, ``cka`` ``[branch, branch_other]`` is exact linear CKA of the branches' flattened responses when the
layer's K responses hold at most ``max_features`` values together (the ``[K D, K D]`` cross-covariance is streamed),
and the unbiased minibatch estimate otherwise; ``cka_minibatch`` is the minibatch estimate for every layer (it
depends on the batch size). Entries across layers are NaN. ``mean_cka`` is each layer's mean CKA between distinct
branches.

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

from probekit.api import (Analysis, analysis_hooks, Batch, branch_coords, compensated_add, compensated_value,
                          discover_branches, layer_coords, load_model, ProbekitError, responses_of)

from .cka import cross_cka, cross_products, exact_cka, minibatch_cka, minibatch_hsic, self_energy


@dataclass
class SimilarityOptions:
    """``max_features``: the most values a layer's K responses may hold together for exact CKA (its
    cross-covariance takes ``8 (K D)^2`` bytes); wider layers get the minibatch estimate. ``reference``: a model
    to compare with, branch by branch."""

    max_features: int = field(default=4096, metadata={"help": "K x D at most for exact CKA (else the minibatch "
                                                                "estimate)"})
    reference: str = field(default="", metadata={"help": "a --model spec to compare with, branch by branch"})

    def check(self):
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
        return self._with_reference(ds) if self.reference is not None else ds

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
