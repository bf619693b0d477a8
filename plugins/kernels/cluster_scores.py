"""Do points cluster by their labels? UMAP embedding, clustering and permutation-tested agreement scores.

umap-learn (and numba, which it compiles with) is imported only when an
embedding is made. Its compiled functions are cached on disk (numba
``cache=True``); the cache goes to ``$NUMBA_CACHE_DIR``, by default
``~/.cache/probekit/numba``, so the first compile is paid once per machine.
The neighbour graph is computed exactly with scikit-learn and handed to umap,
which skips pynndescent (its compile is not cacheable). scikit-learn too is
imported only when scores are computed, not when the plugin is registered.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from probekit.api import bootstrap_ci, ProbekitError, summarise_null
from probekit_plugins.kernels import agreement

SCORES = ("ari_kmeans", "nmi_kmeans", "ari_hdbscan", "nmi_hdbscan", "silhouette")
CLUSTERINGS = ("kmeans", "hdbscan")


BRUTE_HDBSCAN_MAX = 20_000  # points; brute force holds an n x n matrix


@dataclass(frozen=True)
class UmapSettings:
    """umap-learn parameters: ``n_neighbors`` (capped at n - 1), ``min_dist``, 2 components, euclidean metric,
    ``n_epochs`` of layout optimisation, ``random_state`` = the run's seed (which makes umap single-threaded
    and reproducible). The neighbour graph is exact, from scikit-learn, passed as ``precomputed_knn``."""

    n_neighbors: int = 15
    min_dist: float = 0.1
    n_epochs: int = 200


def umap_embedding(points: np.ndarray, seed: int, settings: UmapSettings) -> np.ndarray:
    """``[n, d]`` -> ``[n, 2]`` UMAP embedding (unitless).

    The exact k-nearest-neighbour graph comes from scikit-learn (``NearestNeighbors``); that spares umap's
    approximate NN-descent (pynndescent), whose numba compile is not cached and costs about 50 s in every
    new process.
    """
    n = len(points)
    if n < 4:
        raise ProbekitError(f"UMAP needs at least 4 points, got {n}")
    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "probekit" / "numba"))
    import umap  # heavy (numba): only when an embedding is made
    from sklearn.neighbors import NearestNeighbors

    k = min(settings.n_neighbors, n - 1)
    distances, indices = NearestNeighbors(n_neighbors=k).fit(points).kneighbors(points)
    reducer = umap.UMAP(n_neighbors=k, min_dist=settings.min_dist, n_components=2, metric="euclidean",
                        n_epochs=settings.n_epochs, random_state=seed, init="spectral" if n > 16 else "random",
                        precomputed_knn=(indices, distances, None))
    threads = torch.get_num_threads()  # numba's OpenMP start-up resets the process's (and so torch's) thread count
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*n_jobs value.*")  # random_state forces one thread
            warnings.filterwarnings("ignore", message=".*precomputed_knn.*")
            return reducer.fit_transform(points).astype(np.float64)
    finally:
        torch.set_num_threads(threads)


def cluster(points: np.ndarray, k: int, seed: int) -> dict[str, np.ndarray]:
    """``{"kmeans": [n], "hdbscan": [n]}`` cluster ids: KMeans with ``k`` clusters (10 seeded restarts),
    and HDBSCAN (min_cluster_size 5; noise is its own id, -1). In more than 16 dimensions HDBSCAN uses brute
    force (up to 20,000 points), about ten times faster there than its trees and with the same result."""
    from sklearn.cluster import HDBSCAN, KMeans

    brute = points.shape[1] > 16 and len(points) <= BRUTE_HDBSCAN_MAX
    return {
        "kmeans": KMeans(n_clusters=min(k, len(points)), n_init=10, random_state=seed).fit_predict(points),
        "hdbscan": HDBSCAN(min_cluster_size=min(5, len(points)), algorithm="brute" if brute else "auto",
                           copy=True).fit_predict(points),
    }


def _scores(clusters: dict[str, np.ndarray], labels: np.ndarray, distances: np.ndarray, sample: np.ndarray
            ) -> np.ndarray:
    """``[P, len(SCORES)]``: the :data:`SCORES` of each labeling ``labels [P, n]`` against the clusters, the
    silhouette on the points ``sample`` (whose ``distances`` are given)."""
    out = []
    for method in CLUSTERINGS:
        out += [agreement.ari(labels, clusters[method]), agreement.nmi(labels, clusters[method])]
    return np.stack([*out, agreement.silhouette(distances, labels[:, sample])], axis=1)


@dataclass(frozen=True)
class ScoreSet:
    """:data:`SCORES` of the true labels (``observed``), their mean over label permutations (``null``), one-sided
    permutation p-values ``(1 + #{permuted >= observed}) / (1 + permutations)`` (``p``), and bootstrap
    intervals ``[score, 2]`` over the points with the clusters held fixed (``ci``; NaN for the silhouette, which
    duplicated points would bias), and the null's central 95% ``[score, 2]`` (``band``)."""

    observed: np.ndarray
    null: np.ndarray
    p: np.ndarray
    ci: np.ndarray
    band: np.ndarray


def label_agreement(points: np.ndarray, labels: np.ndarray, clusters: dict[str, np.ndarray], permutations: int,
                    silhouette_sample: int, seed: int, resamples: int = 0, level: float = 0.95) -> ScoreSet:
    """How well ``clusters`` (and the geometry of ``points`` ``[n, d]``) follow ``labels`` ``[n]`` (codes
    ``0..K-1``), against ``permutations`` shuffles of the labels.

    The silhouette uses the labels as clusters, on a seeded subsample of at most ``silhouette_sample`` points
    (the same subsample for the permutations).
    """
    from sklearn.metrics import pairwise_distances

    rng = np.random.default_rng(seed)
    sample = np.sort(rng.permutation(len(points))[:silhouette_sample])
    distances = pairwise_distances(points[sample])
    observed = _scores(clusters, labels[None], distances, sample)[0]
    null = _scores(clusters, np.stack([rng.permutation(labels) for _ in range(permutations)]), distances,
                   sample) if permutations else None
    found = summarise_null(observed, null)

    def resampled(rows: np.ndarray) -> np.ndarray:
        picked = {method: ids[rows] for method, ids in clusters.items()}
        return np.append(_scores(picked, labels[rows][None], np.zeros((0, 0)), np.zeros(0, dtype=int))[0, :-1],
                         np.nan)

    ci = bootstrap_ci(resampled, len(points), resamples, rng, level)
    return ScoreSet(observed, found["null"], found["p"], ci, found["band"])
