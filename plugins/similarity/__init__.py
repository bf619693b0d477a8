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

Gated experts (kinds ``gated`` and ``routed``): ``cka`` compares the gated contributions ``g_k e_k`` (what the
layer sums); with ``ungated=true`` (the default) ``cka_ungated`` compares the experts' own outputs ``e_k`` on every
sample (token-routed experts then run on every token: K expert passes), and ``cka_corouted`` the gated
contributions over the samples routed to both experts of a pair (:mod:`.corouted`), with ``corouted_samples``.
A gate that makes contributions orthogonal shows as a low ``cka`` beside a high ``cka_ungated``.
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

from . import corouted
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
    ungated: bool = field(default=True, metadata={"help": "gated experts: also compare the experts' outputs "
                                                          "before the gate (routed experts run on every token)"})

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
                   "ref_hsic": "sum", "cross_hsic": "sum", "ungated_products": "compensated-sum",
                   "ungated_sums": "compensated-sum", "ungated_hsic": "sum", "pairs": "compensated-sum",
                   "pair_sums": "compensated-sum", "pair_counts": "sum", "pair_hsic": "sum"}
    description = "linear CKA between the branches of each layer (exact, and the unbiased minibatch estimate)"
    Options = SimilarityOptions

    def __init__(self, context, options):
        super().__init__(context, options)
        layers, sizes = context.branchset.layers, context.response_sizes
        self.exact = {layer.name for layer in layers
                      if sizes.get(layer.name) and len(layer.branches) * sizes[layer.name] <= options.max_features}
        self.products, self.sums = {}, {}  # exact layers: compensated sums [2, K D, K D] and [2, K D]
        self.hsic = {}  # layer name -> [K, K] summed minibatch HSIC
        self.count = 0
        self.needs_ungated = options.ungated and any(layer.gated for layer in layers)
        self.ungated_products, self.ungated_sums, self.ungated_hsic = {}, {}, {}  # as products, sums, hsic
        self.pairs, self.pair_sums, self.pair_counts, self.pair_hsic = {}, {}, {}, {}  # co-routed (.corouted)
        tested = bool(options.permutations or options.resamples)
        self.sketch = self._sketch_array("response_sketch", "branch", len(context.branchset), "response") \
            if tested else None
        self.ungated_sketch = self._sketch_array("ungated_sketch", "branch", len(context.branchset),
                                                 "expert output before the gate (zeros off gated layers)") \
            if tested and self.needs_ungated else None
        self.gate_values = context.sample_array(self.name, "gate_values", ("sample", "branch"),
                                                (len(context.branchset),), np.float32, {
                                                    "long_name": "each expert's gate value per sample",
                                                    "description": "1 off the gated layers"}) \
            if tested and any(layer.gated for layer in layers) else None
        self.projections = {}  # (model, layer name) -> its sketch matrix, made from its response width at first
        self.ref_products, self.ref_sums, self.cross, self.ref_hsic, self.cross_hsic = {}, {}, {}, {}, {}
        self.reference = self.reference_set = self.reference_sketch = None
        if options.reference:
            self._load_reference(options.reference)
            self.reference_sketch = self._sketch_array("reference_sketch", "reference_branch",
                                                       len(self.reference_set), "reference branch's response") \
                if tested else None

    def _sketch_array(self, name: str, dim: str, branches: int, what: str):
        return self.context.sample_array(self.name, name, ("sample", dim, "sketch"), (branches, self.options.sketch),
                                         np.float32, {"long_name": f"sketch of each {what} per sample",
                                                      "description": "itself (zero-padded) when it has at most "
                                                                     "`sketch` values, else a Gaussian projection"})

    def _load_reference(self, spec: str) -> None:
        self.reference = load_model(spec).module.to(self.context.device).eval()
        self.reference_set = discover_branches(self.reference)
        shared = ({layer.name for layer in self.reference_set.layers}
                  & {layer.name for layer in self.context.branchset.layers})
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
        start = int(batch.index[0])
        if self.sketch is not None:
            self.sketch.write(start, np.concatenate([self._sketched(name, responses) for name, responses
                                                     in batch.responses.items()], axis=1))
        if self.gate_values is not None:
            self.gate_values.write(start, np.concatenate([
                batch.gates[name].float().cpu().numpy() if name in batch.gates else
                np.ones(responses.shape[:2], np.float32) for name, responses in batch.responses.items()], axis=1))
        if self.ungated_sketch is not None:
            self.ungated_sketch.write(start, np.concatenate([
                self._sketched(name, batch.ungated[name]) if name in batch.ungated else
                np.zeros((len(responses), responses.shape[1], self.options.sketch), np.float32)
                for name, responses in batch.responses.items()], axis=1))
        if self.reference_sketch is not None:
            self.reference_sketch.write(start, np.concatenate([self._sketched(name, responses, "reference")
                                                               for name, responses in theirs.items()], axis=1))
        for name, responses in batch.responses.items():  # [N, K, D]
            other = theirs.get(name) if name in self.cross_hsic else None
            exact = name in self.exact
            self._add(self.products, self.sums, self.hsic, name, responses, exact)
            if name in batch.ungated:
                self._add(self.ungated_products, self.ungated_sums, self.ungated_hsic, name, batch.ungated[name],
                          exact)
            if name in batch.gates:
                self._add_corouted(name, responses, batch.gates[name], exact)
            if other is not None:
                self._add_reference(name, responses, other, exact)
        self.count += batch.index.shape[0]

    @staticmethod
    def _add(products: dict, sums: dict, hsic: dict, name: str, responses: torch.Tensor, exact: bool) -> None:
        """One batch's ``[N, K, D]`` responses into a view's state (exact moments when ``exact``, minibatch HSIC)."""
        if exact:
            products[name] = compensated_add(products.get(name), cross_products(responses))
            sums[name] = compensated_add(sums.get(name), responses.flatten(1).double().sum(0))
        if (value := minibatch_hsic(responses)) is not None:
            hsic[name] = hsic[name] + value if name in hsic else value

    def _add_corouted(self, name: str, responses: torch.Tensor, gates: torch.Tensor, exact: bool) -> None:
        if exact:
            pairs, sums, counts = corouted.moments(responses, gates)
            self.pairs[name] = compensated_add(self.pairs.get(name), pairs)
            self.pair_sums[name] = compensated_add(self.pair_sums.get(name), sums)
            self.pair_counts[name] = self.pair_counts.get(name, 0) + counts
        else:
            value = corouted.minibatch(responses, gates)
            self.pair_hsic[name] = self.pair_hsic[name] + value if name in self.pair_hsic else value

    def _sketched(self, name: str, responses: torch.Tensor, model: str = "probed") -> np.ndarray:
        """``[N, K, sketch]`` of one layer's responses (its projection made at the first batch)."""
        key = (model, name)
        if key not in self.projections:
            offset = [layer.name for layer in self.reference_set.layers].index(name) + 10_000 \
                if model == "reference" else self._index(name)
            self.projections[key] = projection(responses.shape[2], self.options.sketch, self.context.seed + offset)
        return sketched(responses, self.projections[key], self.options.sketch)

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
            cka[part, part], minibatch[part, part], method = self._layer_cka(self.products, self.sums, self.hsic,
                                                                             layer)
            methods.append(method)
            means.append(_mean_off_diagonal(cka[part, part]))
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
        ds = self._with_gated_views(ds)
        ds = self._with_evidence(ds)
        return self._with_reference(ds) if self.reference is not None else ds

    def _layer_cka(self, products: dict, sums: dict, hsic: dict, layer) -> tuple[np.ndarray, np.ndarray, str]:
        """A layer's ``[K, K]`` CKA (exact when its moments were kept), its minibatch estimate, and the method."""
        k = len(layer.branches)
        minibatch = minibatch_cka(hsic[layer.name].cpu().numpy()) if layer.name in hsic else np.full((k, k), np.nan)
        if layer.name not in products:
            return minibatch, minibatch, "minibatch"
        return exact_cka(self._exact_value(products, layer.name), self._exact_value(sums, layer.name), self.count,
                         k), minibatch, "exact"

    def _with_gated_views(self, ds: xr.Dataset) -> xr.Dataset:
        """``cka_ungated`` and ``cka_corouted`` (with their layer means and ``corouted_samples``) on gated layers."""
        gated = [(layer, part) for layer, part in self.context.branchset.layer_slices() if layer.gated]
        if not gated:
            return ds
        b = len(self.context.branchset)
        ungated, together, counts = np.full((b, b), np.nan), np.full((b, b), np.nan), np.full((b, b), np.nan)
        ungated_means, together_means = np.full(len(ds.layer), np.nan), np.full(len(ds.layer), np.nan)
        index = {name: i for i, name in enumerate(ds.layer.values)}
        for layer, part in gated:
            if layer.name in self.ungated_hsic or layer.name in self.ungated_products:
                ungated[part, part] = self._layer_cka(self.ungated_products, self.ungated_sums, self.ungated_hsic,
                                                      layer)[0]
                ungated_means[index[layer.name]] = _mean_off_diagonal(ungated[part, part])
            together[part, part], counts[part, part] = self._corouted(layer)
            together_means[index[layer.name]] = _mean_off_diagonal(together[part, part])
        return ds.assign(
            cka_ungated=(("branch", "branch_other"), ungated, {
                "long_name": "linear CKA between the experts' outputs before the gate", "units": "1",
                "description": "gated layers only (similarity.ungated=true), every sample; method as cka"}),
            mean_cka_ungated=("layer", ungated_means, {"long_name": "mean CKA between distinct experts before the "
                                                                    "gate", "units": "1"}),
            cka_corouted=(("branch", "branch_other"), together, {
                "long_name": "linear CKA of the gated contributions over the samples routed to both experts",
                "units": "1", "description": "gated layers only; NaN for a pair co-routed on too few samples"}),
            mean_cka_corouted=("layer", together_means, {"long_name": "mean co-routed CKA between distinct experts",
                                                         "units": "1"}),
            corouted_samples=(("branch", "branch_other"), counts, {
                "long_name": "samples routed to both experts", "units": "samples"}),
        )

    def _corouted(self, layer) -> tuple[np.ndarray, np.ndarray]:
        """``([K, K] co-routed CKA, [K, K] co-routed sample counts)`` of a gated layer."""
        name, k = layer.name, len(layer.branches)
        if name in self.pairs:
            counts = self.pair_counts[name].cpu().numpy()
            return corouted.exact(self._exact_value(self.products, name), self._exact_value(self.pairs, name),
                                  self._exact_value(self.pair_sums, name), counts), counts
        if name in self.pair_hsic:
            return corouted.from_minibatch(self.pair_hsic[name].cpu().numpy()), np.full((k, k), np.nan)
        return np.full((k, k), np.nan), np.full((k, k), np.nan)

    def _read(self, array, ds: xr.Dataset) -> np.ndarray:
        """A per-sample sketch, whole (kept in ``ds`` when no store is written)."""
        if array.in_memory:
            ds[array.name] = (array.dims, array.values(), array.attrs)
        array.checkpoint()
        return array.read(0, self.context.n_samples)

    def _with_evidence(self, ds: xr.Dataset) -> xr.Dataset:
        """Per layer: the mean CKA between its branches (and before the gate) against shuffled samples, with an
        interval (sketched)."""
        if self.sketch is None:
            return ds
        o, rng = self.options, evidence_rng(self.context.seed, self.name)
        views = [("mean_cka", self._read(self.sketch, ds), None)]
        if self.ungated_sketch is not None:
            views.append(("mean_cka_ungated", self._read(self.ungated_sketch, ds), "gated"))
        for name, sketch, only in views:
            found = [evidence.evidence(sketch[:, part], o.permutations, o.resamples, o.level, rng)
                     if only is None or layer.gated else None for layer, part in self.context.branchset.layer_slices()]
            ds = add_evidence(ds, name, ("layer",), _stacked(found), o, permuted=NULL, alternative="greater",
                              resampled="samples (on the responses' sketch)")
        if self.gate_values is not None:
            routed, sketch = self._read(self.gate_values, ds) != 0, views[0][1]
            found = [evidence.corouted_evidence(sketch[:, part], routed[:, part], o.permutations, o.resamples, o.level,
                                                rng) if layer.gated else None
                     for layer, part in self.context.branchset.layer_slices()]
            ds = add_evidence(ds, "mean_cka_corouted", ("layer",), _stacked(found), o, alternative="greater",
                              permuted="each pair's co-routed samples of one expert shuffled (on the responses' "
                                       "sketch)", resampled="samples (on the responses' sketch)")
        return ds

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
        return self._with_match_evidence(ds.assign_coords(
            reference_branch=("reference_branch", names),
            reference_branch_layer=("reference_branch", np.array(theirs.layer_of_branch, dtype=object)),
        ).assign(
            cka_reference=(("branch", "reference_branch"), values, {
                "long_name": "linear CKA with the reference model's branches", "units": "1",
                "description": "same-layer pairs only (exact or minibatch as cka); NaN elsewhere"}),
            match=("branch", match, {"long_name": "the reference branch matched to the branch",
                                     "description": "Hungarian matching that maximises the layer's summed CKA"}),
            match_cka=("branch", match_cka, {"long_name": "CKA with the matched reference branch", "units": "1"}),
        ), columns)

    def _with_match_evidence(self, ds: xr.Dataset, columns: dict) -> xr.Dataset:
        """Per layer: the mean CKA of the Hungarian matching, against the reference's samples shuffled (which keeps
        each model's own structure and breaks only the pairing of samples), with an interval; on the sketches."""
        means = np.full(len(ds.layer), np.nan)
        for i, layer in enumerate(self.context.branchset.layers):
            if layer.name in self.cross_hsic:
                means[i] = float(np.nanmean(ds.match_cka.values[ds.branch_layer.values == layer.name]))
        ds = ds.assign(mean_match_cka=("layer", means, {
            "long_name": "mean CKA of each branch with its matched reference branch", "units": "1"}))
        if self.reference_sketch is None:
            return ds
        own, theirs = self._read(self.sketch, ds), self._read(self.reference_sketch, ds)
        o, rng = self.options, evidence_rng(self.context.seed, f"{self.name} reference")
        found = [evidence.match_evidence(own[:, part], theirs[:, columns[layer.name]], o.permutations, o.resamples,
                                         o.level, rng) if layer.name in self.cross_hsic else None
                 for layer, part in self.context.branchset.layer_slices()]
        return add_evidence(ds, "mean_match_cka", ("layer",), _stacked(found), o, alternative="greater",
                            permuted="the reference model's samples shuffled (on the responses' sketches)",
                            resampled="samples (on the responses' sketches)")

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
        k = self.cross_hsic[name].shape[0]
        own = self.hsic.get(name, _zeros(k, k, "cpu"))
        return minibatch_cka(self.cross_hsic[name].cpu().numpy(), own.cpu().numpy(),
                             self.ref_hsic[name].cpu().numpy())

    def summary(self, ds: xr.Dataset) -> dict:
        out = {f"mean CKA in {layer} ({method})": round(float(value), 4)
               for layer, value, method in zip(ds.layer.values[:8], ds.mean_cka.values, ds.cka_method.values,
                                               strict=False)}
        if "mean_cka_ungated" in ds:
            for layer in ds.layer.values[np.isfinite(ds.mean_cka_ungated.values)][:4]:
                out[f"mean CKA in {layer} before the gate"] = round(float(ds.mean_cka_ungated.sel(layer=layer)), 4)
                out[f"mean co-routed CKA in {layer}"] = round(float(ds.mean_cka_corouted.sel(layer=layer)), 4)
        if "match_cka" in ds:
            out["mean CKA with the matched reference branch"] = round(float(np.nanmean(ds.match_cka.values)), 4)
        return out


def _stacked(found: list) -> dict[str, np.ndarray]:
    """Per-layer evidence dicts stacked along ``layer``; ``None`` (a layer without the statistic) gives NaN."""
    like = next(f for f in found if f is not None)
    return {key: np.stack([f[key] if f is not None else np.full_like(like[key], np.nan, dtype=np.float64)
                           for f in found]) for key in like}


def _mean_off_diagonal(block: np.ndarray) -> float:
    """The mean of the finite entries of a square block off its diagonal (NaN when there are none)."""
    off = block[~np.eye(len(block), dtype=bool)]
    return float(np.nanmean(off)) if np.isfinite(off).any() else np.nan


probekit_register_analyses, probekit_plot = analysis_hooks(Similarity)
