"""Cat-eye segmentation on generator components with Chan-Vese (paper appendix F, Figs. 12 and 21).

1. Each component ``[3, H, W]`` becomes a scalar image: min-max stretched to
   [0, 1], then the value channel of HSV (scikit-image ``rgb2hsv``).
2. *Init* components locate eyes and nose. Their localisation score is the
   mean |z-score| of their value images, Gaussian-smoothed (``sigma``
   pixels). With the prior (``prior=true``; off by default) the score is multiplied by the
   mean score over the samples the roles were chosen on, scaled to [0, 1]:
   faces in AFHQ and CelebA are aligned, so that mean marks where this data
   puts eyes and nose. It is learnt from the components alone, no labels.
3. ``skimage.segmentation.chan_vese`` starts positive on the top
   ``quantile`` of the score and segments either the score itself
   (segment ``"init"``) or the mean value image of *segment* components
   (the paper's choice: components that are flat over the eyes).
4. The segmented region (its smaller side, if it covers over half the
   image) is split into connected components. The pair of similar size that
   sits on one row, side by side, is kept as the eyes: the paper's "row-wise
   multiplicity of 2". No such pair: nothing is found.

:func:`choose_roles` picks the roles from a batch of samples without labels:
init sets grow greedily, one component at a time (at most ``max_init``),
segmenting the score; then each single other component is tried as the
segment image against the score. The roles that give the most *consistent*
pairs win: pairs whose two centroids lie within ``consistency`` x W of the
median pair over the samples (on aligned faces, pairs that agree across
samples are eyes; scattered ones are whiskers, fur or nose and mouth).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

SCORE = "init"  # segment the init score itself


@dataclass(frozen=True)
class PairRule:
    """What counts as a horizontal pair, as fractions of the image: region areas within
    [``min_area``, ``max_area``], rows within ``row_tolerance`` x H, centres at least ``min_separation`` x W
    apart, areas within a factor ``area_ratio``; regions that touch the image border are no candidates."""

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


def init_score(values: np.ndarray, init: list[int], sigma: float) -> np.ndarray:
    """``[H, W]``: the smoothed mean |z-score| of the init components' value images (``values`` ``[K, H, W]``)."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(np.abs(_zscore(values[init])).mean(axis=0), sigma)


def score_prior(scores: np.ndarray) -> np.ndarray:
    """``[H, W]`` in [0, 1]: the mean of the init scores ``[S, H, W]`` of S samples, min-max scaled."""
    mean = scores.mean(axis=0)
    span = float(mean.max() - mean.min())
    return (mean - mean.min()) / span if span > 0 else np.ones_like(mean)


def _inside(bbox: tuple[int, int, int, int], h: int, w: int) -> bool:
    """Whether a region's bounding box (rows and columns, end exclusive) keeps off the image border."""
    top, left, bottom, right = bbox
    return top > 0 and left > 0 and bottom < h and right < w


def horizontal_pair(mask: np.ndarray, rule: PairRule) -> tuple[np.ndarray, np.ndarray]:
    """The best side-by-side pair of regions of ``mask`` ``[H, W]``: its mask and centroids ``[2, (y, x)]``
    (left eye first; NaN and an empty mask when there is none)."""
    from skimage.measure import label, regionprops

    h, w = mask.shape
    regions = [r for r in regionprops(label(mask))
               if rule.min_area * h * w <= r.area <= rule.max_area * h * w and _inside(r.bbox, h, w)]
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


@dataclass(frozen=True)
class SegmentSettings:
    """``quantile``: share of pixels the level set starts positive on; ``sigma``: smoothing of the init score
    [pixels]; ``mu``: Chan-Vese's length weight; ``iterations``: its most iterations; ``rule``: the eye pair."""

    quantile: float = 0.05
    sigma: float = 2.0
    mu: float = 0.25
    iterations: int = 200
    rule: PairRule = field(default_factory=PairRule)


def segment_eyes(values: np.ndarray, init: list[int], segment: list[int] | str, prior: np.ndarray | None,
                 settings: SegmentSettings) -> Segmentation:
    """One sample's value images ``[K, H, W]``: Chan-Vese on the init score (``segment == "init"``) or on the
    mean of ``values[segment]``, started from the top of the init score (times ``prior`` ``[H, W]``, if
    given); then :func:`horizontal_pair`."""
    from skimage.segmentation import chan_vese

    score = init_score(values, init, settings.sigma)
    if prior is not None:
        score = score * prior
    start = score > np.quantile(score, 1 - settings.quantile)
    image = score if segment == SCORE else values[segment].mean(axis=0)
    region = chan_vese(image, mu=settings.mu, max_num_iter=settings.iterations,
                       init_level_set=np.where(start, 1.0, -1.0))
    if region.mean() > 0.5:
        region = ~region
    eyes, centroids = horizontal_pair(region, settings.rule)
    return Segmentation(region, eyes, centroids)


def sample_prior(values: np.ndarray, init: list[int], sigma: float) -> np.ndarray:
    """The prior ``[H, W]`` of init components over value images ``[S, K, H, W]``."""
    return score_prior(np.stack([init_score(v, init, sigma) for v in values]))


def consistent_pairs(centroids: np.ndarray, tolerance: float) -> int:
    """How many of the pairs ``[S, 2, 2]`` (NaN: none found) lie within ``tolerance`` pixels of their median."""
    found = np.isfinite(centroids).all(axis=(1, 2))
    if not found.any():
        return 0
    median = np.median(centroids[found], axis=0)
    return int((np.linalg.norm(centroids[found] - median, axis=2).max(axis=1) <= tolerance).sum())


@dataclass(frozen=True)
class RoleChoice:
    """Automatic roles: ``max_init`` init components at most, chosen on at most ``samples`` samples;
    ``consistency``: how close to the median pair a pair must lie, as a fraction of the image width;
    ``prior``: whether the score is weighted by the sample prior."""

    max_init: int = 3
    samples: int = 16
    consistency: float = 0.1
    prior: bool = True


def _consistency(values: np.ndarray, init: list[int], segment: list[int] | str, choice: RoleChoice,
                 settings: SegmentSettings) -> int:
    prior = sample_prior(values, init, settings.sigma) if choice.prior else None
    centroids = np.stack([segment_eyes(v, init, segment, prior, settings).centroids for v in values])
    return consistent_pairs(centroids, choice.consistency * values.shape[-1])


def choose_roles(values: np.ndarray, choice: RoleChoice, settings: SegmentSettings, init: list[int] | None = None,
                 segment: list[int] | str | None = None) -> tuple[list[int], list[int] | str]:
    """Roles from value images ``[S, K, H, W]`` (see the module doc); a role given is kept as it is."""
    values = values[:choice.samples]
    k = values.shape[1]
    best = -1  # consistent pairs of the chosen init segmenting the score (-1: not counted yet)
    if init is None:
        fixed = [] if segment is None or segment == SCORE else list(segment)
        init = []
        while len(init) < min(choice.max_init, k - 1 - len(fixed)):
            count, extra = max((_consistency(values, init + [j], segment or SCORE, choice, settings), -j)
                               for j in range(k) if j not in init + fixed)
            if count <= best:
                break
            init, best = init + [-extra], count
    if segment is not None:
        return init, segment
    segment = SCORE
    if best < 0:
        best = _consistency(values, init, SCORE, choice, settings)
    for j in (j for j in range(k) if j not in init):
        count = _consistency(values, init, [j], choice, settings)
        if count > best:
            segment, best = [j], count
    return init, segment
