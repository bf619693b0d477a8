"""``kernels``: do conv kernels cluster by branch? UMAP, KMeans/HDBSCAN and permutation tests (Voss et al.).

Every kernel (one output channel's weights) of the chosen conv layers is
labelled with its branch, normalised, embedded with UMAP per layer, and
clustered in UMAP space and in raw kernel space. Agreement between clusters
and branches (ARI, NMI) and the silhouette of the branch labels are compared
with shuffled branch labels. The model's weights are all it needs: the
probed data are not used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import xarray as xr
from tqdm.auto import tqdm  # (renders as a widget in a notebook)

from probekit.api import (add_evidence, Analysis, analysis_hooks, Batch, describe_p, EvidenceOptions,
                          init_note, model_states, ProbekitError, SIGNIFICANCE)
from .cluster_scores import (CLUSTERINGS, SCORES, ScoreSet, UmapSettings, cluster, label_agreement,
                                     umap_embedding)
from .kernel_sets import NORMALISATIONS, LayerKernels, collect_kernels, normalise

SPACES = ("umap", "raw")


@dataclass
class KernelsOptions(EvidenceOptions):
    """``layers``: glob over layer names (empty: every conv shared by all branches, and every grouped conv);
    ``normalise``: none, l2 or zero-mean-l2 (per kernel); ``n_neighbors``, ``min_dist``: UMAP's;
    ``silhouette_sample``: most kernels the silhouette uses per layer; ``compare_init``: also score the model's
    initialisation (PyTorch's default init under --seed); and the evidence's options
    (:class:`probekit.api.EvidenceOptions`): ``permutations`` shuffles of the branch labels (999 by default, so
    that a Holm-corrected p over 20 layers can pass), ``resamples`` of the kernels for the intervals."""

    layers: str = ""
    normalise: str = "zero-mean-l2"
    n_neighbors: int = 15
    min_dist: float = 0.1
    silhouette_sample: int = field(default=2000, metadata={"help": "most kernels the silhouette uses per layer"})
    compare_init: bool = False
    init_seeds: list[int] = field(default_factory=list, metadata={
        "help": "score several initialisations, one state init-seedS per seed (instead of compare_init's one)"})

    def check(self):
        super().check()
        if self.normalise not in NORMALISATIONS:
            raise ProbekitError(f"kernels.normalise must be one of {', '.join(NORMALISATIONS)}, "
                                f"not {self.normalise!r}")
        if self.n_neighbors < 2 or not 0 <= self.min_dist <= 1:
            raise ProbekitError("kernels.n_neighbors must be at least 2 and kernels.min_dist within [0, 1]")
        if self.permutations < 0 or self.silhouette_sample < 4:
            raise ProbekitError("kernels.permutations must be >= 0 and kernels.silhouette_sample >= 4")


@dataclass
class StateResult:
    """One model state's per-kernel embedding ``[n, 2]`` and cluster ids ``[space, clustering, n]``, and
    per-layer scores ``[layer, space, score]`` (observed, null mean, p-value) and intervals ``[..., 2]``."""

    embedding: np.ndarray
    clusters: np.ndarray
    observed: np.ndarray
    null: np.ndarray
    p: np.ndarray
    ci: np.ndarray
    band: np.ndarray


def score_layer(layer: LayerKernels, options: KernelsOptions, seed: int
                ) -> tuple[np.ndarray, np.ndarray, list[ScoreSet]]:
    """One layer: UMAP embedding ``[n, 2]``, cluster ids ``[space, clustering, n]``, and a
    :class:`ScoreSet` per space (:data:`SPACES`).

    The kernels go through UMAP and the clusterings in a seeded random order (results are returned in the
    layer's order): kernels are stored branch by branch, and any dependence of those algorithms on the input
    order (initialisation, tie-breaking) must not pass for branch structure.
    """
    order = np.random.default_rng(seed).permutation(len(layer.weights))
    raw = normalise(layer.flat, options.normalise)[order]
    codes = np.unique(layer.branch.astype(str), return_inverse=True)[1][order]
    embedded = umap_embedding(raw, seed, UmapSettings(options.n_neighbors, options.min_dist))
    ids, scores = [], []
    for points in (embedded, raw):
        clusters = cluster(points, int(codes.max()) + 1, seed)
        ids.append([clusters[c] for c in CLUSTERINGS])
        scores.append(label_agreement(points, codes, clusters, options.permutations, options.silhouette_sample, seed,
                                      options.resamples, options.level))
    inverse = np.argsort(order)
    return embedded[inverse], np.array(ids)[..., inverse], scores


class Kernels(Analysis):
    name = "kernels"
    plot = "probekit_plugins.kernels.plot:plot_kernels"
    merge_rules = {}  # reads the weights at finalize; no streaming state
    description = "UMAP clustering of conv kernels by branch, with permutation-tested ARI, NMI and silhouette"
    Options = KernelsOptions

    def __init__(self, context, options):
        super().__init__(context, options)
        self.models = model_states(context.model, self.name, options.compare_init, context.seed,
                                   context.random_init, options.init_seeds)
        self.layers = {state: collect_kernels(m, context.branchset, options.layers or None)
                       for state, m in self.models.items()}

    def update(self, batch: Batch) -> None:
        """The data are not used: kernels are read from the weights."""

    def _score_state(self, layers: list[LayerKernels], bar: tqdm) -> StateResult:
        embeddings, clusters, scores = [], [], []
        for layer in layers:
            embedded, ids, per_space = score_layer(layer, self.options, self.context.seed)
            embeddings.append(embedded)
            clusters.append(ids)
            scores.append(per_space)
            bar.update()
        return StateResult(np.concatenate(embeddings), np.concatenate(clusters, axis=2),
                           *(np.array([[getattr(s, f) for s in layer] for layer in scores])
                             for f in ("observed", "null", "p", "ci", "band")))

    def finalize(self) -> xr.Dataset:
        total = sum(len(layers) for layers in self.layers.values())
        with tqdm(total=total, desc="kernels", unit="layer", leave=False, disable=None) as bar:  # None: TTY only
            results = {state: self._score_state(layers, bar) for state, layers in self.layers.items()}
        layers = next(iter(self.layers.values()))  # the model as loaded (trained, or random-init)
        states = list(results)

        def stack(field):
            return np.stack([getattr(results[s], field) for s in states])

        score_dims = ("state", "layer", "space", "metric")
        variables = {
            "embedding": (("state", "kernel", "component"), stack("embedding"), {
                "long_name": "UMAP embedding of each kernel, per layer", "units": "1"}),
            "cluster": (("state", "space", "clustering", "kernel"), stack("clusters"), {
                "long_name": "cluster id (HDBSCAN noise: -1)"}),
            "score": (score_dims, stack("observed"), {
                "long_name": "agreement of clusters (ARI, NMI) and geometry (silhouette) with the branch labels",
                "units": "1"}),
        }
        coords = {
            "state": ("state", np.array(states, dtype=object)),
            "layer": ("layer", np.array([k.layer for k in layers], dtype=object)),
            "space": ("space", np.array(SPACES, dtype=object)),
            "clustering": ("clustering", np.array(CLUSTERINGS, dtype=object)),
            "metric": ("metric", np.array(SCORES, dtype=object)),
            "component": ("component", np.arange(2)),
            "kernel_layer": ("kernel", np.concatenate([[k.layer] * len(k.weights) for k in layers]).astype(object)),
            "kernel_branch": ("kernel", np.concatenate([k.branch for k in layers]).astype(object)),
            "kernel_out_channel": ("kernel", np.concatenate([k.out_channel for k in layers])),
        }
        first = [state_layers[0] for state_layers in self.layers.values()]
        if first[0].weights.ndim == 4 and first[0].weights.shape[1] == 3:  # RGB patches, as Voss et al. show
            variables["rgb_kernel"] = (("state", "rgb_kernel", "channel", "ky", "kx"),
                                       np.stack([k.weights for k in first]), {
                                           "long_name": f"raw kernels of {first[0].layer} (3 input channels)",
                                           "units": "parameter units"})
            coords["rgb_kernel_branch"] = ("rgb_kernel", first[0].branch.astype(object))
        ds = xr.Dataset(variables, coords=coords, attrs={
            "normalise": self.options.normalise, "permutations": self.options.permutations,
            "silhouette_sample": self.options.silhouette_sample, "seed": self.context.seed,
            "umap": f"umap-learn, n_neighbors={self.options.n_neighbors} (capped at n-1), "
                    f"min_dist={self.options.min_dist}, 2 components, euclidean, random_state={self.context.seed}",
            "clustering": "KMeans (k = branches in the layer, n_init=10) and HDBSCAN (min_cluster_size=5)",
            "init": init_note(states, self.context.seed)})
        found = {key: stack(key) for key in ("p", "null", "band", "ci")}
        ds = add_evidence(ds, "score", score_dims, found, self.options, family=("layer",),
                          permuted="the branch labels shuffled over the layer's kernels",
                          resampled="kernels, with the clusters held fixed (none for the silhouette)")
        return _with_deprecated_names(ds)

    def summary(self, ds: xr.Dataset) -> dict:
        out = {"layers": ds.sizes["layer"], "kernels": ds.sizes["kernel"]}
        for state in ds.state.values:
            ari = ds.score.sel(state=state, space="umap", metric="ari_kmeans")
            out[f"median UMAP KMeans ARI ({state})"] = round(float(ari.median()), 4)
            if "score_p_adjusted" in ds:
                p = ds.score_p_adjusted.sel(state=state, space="umap", metric="ari_kmeans")
                best = int(np.nanargmin(p.values))
                out[f"layers beyond shuffled labels, UMAP KMeans ARI ({state})"] = (
                    f"{int((p < SIGNIFICANCE).sum())} of {len(p)} ({ds.score_p_adjusted.attrs['correction']}-adjusted "
                    f"p < {SIGNIFICANCE}; best {p.layer.values[best]}: {describe_p(float(p.values[best]))})")
        return out


def _with_deprecated_names(ds: xr.Dataset) -> xr.Dataset:
    """probekit 1.0's names of the null's mean and the p-value (``baseline``, ``p_value``), kept until 2.0."""
    for old, new in (("baseline", "score_null"), ("p_value", "score_p")):
        if new in ds:
            ds[old] = ds[new].copy()
            ds[old].attrs = {**ds[new].attrs, "deprecated": f"the same as {new}; removed in probekit 2.0"}
    return ds


probekit_register_analyses, probekit_plot = analysis_hooks(Kernels)
