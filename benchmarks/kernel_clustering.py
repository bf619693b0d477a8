"""The ``kernels`` analysis on 10,000 kernels against a plain umap-learn + scikit-learn script.

Kernels: 16 summed conv branches ``Conv2d(16, 625, 3)`` (PyTorch default
init), 625 kernels of 144 weights each per branch. probekit: the plugin's
:func:`score_layer` (normalise, UMAP, KMeans and HDBSCAN in UMAP and raw
space, ARI/NMI/silhouette with ``--permutations`` shuffled baselines). Plain:
the same UMAP settings, then KMeans, HDBSCAN, ARI and NMI on the embedding
only, no baseline. numba's compile is paid by a small warm-up fit first and
reported apart (a cached compile loads in seconds; a cold one takes longer).

    python benchmarks/kernel_clustering.py [--kernels-per-branch 625] [--permutations 200]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.cluster import HDBSCAN, KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from torch import nn

from probekit.models.branched import SummedBranches
from probekit.models.branches import DiscoveryConfig, discover
from probekit_plugins.kernels.cluster_scores import UmapSettings, umap_embedding
from probekit_plugins.kernels.kernel_sets import collect_kernels, normalise
from probekit_plugins.kernels import KernelsOptions, score_layer

BRANCHES = 16


def plain(points: np.ndarray, labels: np.ndarray, seed: int) -> float:
    import umap

    start = time.perf_counter()
    embedded = umap.UMAP(n_neighbors=15, min_dist=0.1, random_state=seed).fit_transform(points)
    for ids in (KMeans(n_clusters=BRANCHES, n_init=10, random_state=seed).fit_predict(embedded),
                HDBSCAN(min_cluster_size=5, copy=True).fit_predict(embedded)):
        adjusted_rand_score(labels, ids)
        normalized_mutual_info_score(labels, ids)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kernels-per-branch", type=int, default=625)
    parser.add_argument("--permutations", type=int, default=200)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = SummedBranches([nn.Conv2d(16, args.kernels_per_branch, 3) for _ in range(BRANCHES)])
    (layer,) = collect_kernels(model, discover(model, DiscoveryConfig()))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(layer.weights)} kernels of "
          f"{layer.flat.shape[1]} weights, {BRANCHES} branches")
    start = time.perf_counter()
    umap_embedding(np.random.default_rng(0).normal(size=(200, 8)), 0, UmapSettings())
    print(f"warm-up UMAP fit (numba compile or cache load): {time.perf_counter() - start:.1f} s")
    options = KernelsOptions(permutations=args.permutations)
    start = time.perf_counter()
    _, _, scores = score_layer(layer, options, 0)
    probekit_s = time.perf_counter() - start
    _, codes = np.unique(layer.branch.astype(str), return_inverse=True)
    points = normalise(layer.flat, options.normalise)
    plain_first = plain(points, codes, 0)  # pays pynndescent's numba compile, which is not cached
    plain_s = plain(points, codes, 0)
    print(f"probekit kernels (UMAP + raw space, {args.permutations} permutations) {probekit_s:7.1f} s")
    print(f"plain umap + KMeans + HDBSCAN + ARI/NMI (UMAP space, no baseline)  {plain_s:7.1f} s "
          f"(its first call in this process: {plain_first:.1f} s, compiling pynndescent)")
    print(f"ratio probekit / plain {probekit_s / plain_s:.2f}; target: probekit under 60 s")
    for space, s in zip(("UMAP", "raw"), scores, strict=True):
        print(f"{space}-space KMeans ARI {s.observed[0]:.4f} (p {s.p[0]:.3f}), silhouette {s.observed[4]:.4f} "
              f"(p {s.p[4]:.3f}) at random init (no structure: p should not be small)")


if __name__ == "__main__":
    main()
