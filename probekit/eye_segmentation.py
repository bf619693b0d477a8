"""Cat-eye segmentation on generator components with Chan-Vese (paper appendix F, Figs. 12 and 21).

1. Each component ``[3, H, W]`` becomes a scalar image: min-max stretched to
   [0, 1], then the value channel of HSV (scikit-image ``rgb2hsv``).
2. Roles. *Init* components locate eyes and nose: the level set starts
   positive on the top ``init_quantile`` of their z-scored mean. *Segment*
   components are flat over the eyes: their mean is the image Chan-Vese
   segments (scikit-image ``chan_vese``, started from that level set).
   :func:`choose_roles` picks them automatically: init = the components with
   the highest spatial kurtosis of their value image (a few strong blobs),
   segment = of the rest, those with the least variance inside the init
   region relative to their variance over the whole image.
3. The segmented region (its smaller side, if it covers over half the image)
   is split into connected components. The pair of similar size that sits on
   one row, side by side, is kept as the eyes: the paper's "row-wise
   multiplicity of 2". No such pair: nothing is found.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np


BLOB_Z = 2.0  # z-score of the init score that marks blob pixels (role choice)
MIN_BLOB = 4  # pixels


@dataclass(frozen=True)
class PairRule:
    """What counts as a horizontal pair, as fractions of the image: region areas within
    [``min_area``, ``max_area``], rows within ``row_tolerance`` x H, centres at least ``min_separation`` x W
    apart, areas within a factor ``area_ratio``."""

    min_area: float = 0.001
    max_area: float = 0.05
    row_tolerance: float = 0.08
    min_separation: float = 0.12
    area_ratio: float = 3.0


def value_images(parts: np.ndarray) -> np.ndarray:
    """``[K, 3, H, W]`` components -> ``[K, H, W]`` HSV value of each, after stretching it to [0, 1]."""
    from skimage.color import rgb2hsv  # scikit-image: only when segmenting, not when the plugin registers

    out = []
    for part in parts:
        low, high = float(part.min()), float(part.max())
        rgb = (part - low) / (high - low) if high > low else np.zeros_like(part)
        out.append(rgb2hsv(rgb.transpose(1, 2, 0))[..., 2])
    return np.stack(out)


def _zscore(images: np.ndarray) -> np.ndarray:
    flat = images.reshape(len(images), -1)
    std = flat.std(axis=1, keepdims=True)
    return ((flat - flat.mean(axis=1, keepdims=True)) / np.where(std > 0, std, 1)).reshape(images.shape)


def init_region(values: np.ndarray, init: list[int], quantile: float) -> np.ndarray:
    """``[H, W]`` bool: the top ``quantile`` of the z-scored mean of the init components' value images."""
    score = _zscore(values[init]).mean(axis=0)
    return score > np.quantile(score, 1 - quantile)


def init_blobs(values: np.ndarray, init: list[int]) -> list[np.ndarray]:
    """Pixel masks ``[H, W]`` of the blobs of the init components: connected pixels whose z-scored init
    score exceeds :data:`BLOB_Z` (at least :data:`MIN_BLOB` of them); the top 10% as one blob if none."""
    from skimage.measure import label, regionprops

    score = _zscore(_zscore(values[init]).mean(axis=0)[None])[0]
    labels = label(score > BLOB_Z)
    blobs = [labels == r.label for r in regionprops(labels) if r.area >= MIN_BLOB]
    return blobs or [init_region(values, init, 0.1)]


def choose_roles(values: np.ndarray, init_count: int, segment_count: int) -> tuple[list[int], list[int]]:
    """Automatic roles from value images ``[S, K, H, W]`` of S samples (see the module doc)."""
    from scipy.stats import kurtosis

    s, k = values.shape[:2]
    peaky = kurtosis(values.reshape(s, k, -1), axis=2, nan_policy="omit").mean(axis=0)
    init = [int(i) for i in np.argsort(-np.nan_to_num(peaky, nan=-np.inf))[:init_count]]
    flatness = np.zeros(k)
    for sample in values:
        total = sample.reshape(k, -1).var(axis=1)
        inside = np.mean([sample[:, blob].var(axis=1) for blob in init_blobs(sample, init)], axis=0)
        flatness += np.where(total > 0, inside / np.where(total > 0, total, 1), np.inf)
    rest = [int(i) for i in np.argsort(flatness) if i not in init]
    return init, rest[:segment_count]


def horizontal_pair(mask: np.ndarray, rule: PairRule) -> tuple[np.ndarray, np.ndarray]:
    """The best side-by-side pair of regions of ``mask`` ``[H, W]``: its mask and centroids ``[2, (y, x)]``
    (left eye first; NaN and an empty mask when there is none)."""
    from skimage.measure import label, regionprops

    h, w = mask.shape
    regions = [r for r in regionprops(label(mask))
               if rule.min_area * h * w <= r.area <= rule.max_area * h * w]
    best, best_cost = None, np.inf
    for a, b in combinations(regions, 2):
        (ya, xa), (yb, xb) = a.centroid, b.centroid
        ratio = max(a.area, b.area) / min(a.area, b.area)
        if abs(ya - yb) > rule.row_tolerance * h or abs(xa - xb) < rule.min_separation * w or ratio > rule.area_ratio:
            continue
        cost = abs(ya - yb) / h + np.log(ratio)
        if cost < best_cost:
            best, best_cost = (a, b), cost
    if best is None:
        return np.zeros_like(mask, dtype=bool), np.full((2, 2), np.nan)
    pair = sorted(best, key=lambda r: r.centroid[1])
    out = np.zeros_like(mask, dtype=bool)
    for region in pair:
        out[tuple(region.coords.T)] = True
    return out, np.array([r.centroid for r in pair])


@dataclass(frozen=True)
class Segmentation:
    """One sample: the Chan-Vese region ``[H, W]``, the kept eye pair ``[H, W]`` and its centroids
    ``[2, (y, x)]`` in pixels."""

    region: np.ndarray
    eyes: np.ndarray
    centroids: np.ndarray


def segment_eyes(values: np.ndarray, init: list[int], segment: list[int], quantile: float, rule: PairRule,
                 mu: float = 0.25, iterations: int = 200) -> Segmentation:
    """Chan-Vese on the mean of ``values[segment]`` (``[K, H, W]``), started from the init components'
    region; then :func:`horizontal_pair`."""
    from skimage.segmentation import chan_vese

    start = init_region(values, init, quantile)
    image = values[segment].mean(axis=0)
    region = chan_vese(image, mu=mu, max_num_iter=iterations, init_level_set=np.where(start, 1.0, -1.0))
    if region.mean() > 0.5:
        region = ~region
    eyes, centroids = horizontal_pair(region, rule)
    return Segmentation(region, eyes, centroids)
