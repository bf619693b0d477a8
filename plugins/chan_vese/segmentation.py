"""Cat-eye segmentation on generator components with Chan-Vese (paper appendix F, Figs. 12 and 21).

1. *Init* components locate eyes and nose. Their localisation score ``[H, W]`` is
   the mean, over init components, of each one's contrast energy (its squared
   difference from its own mean colour, summed over RGB, divided by its mean
   so that every init component weighs the same), Gaussian-smoothed (``sigma``
   pixels). With the prior (``prior=true``; off by default) the score is
   multiplied by the mean score over the samples the roles were chosen on,
   scaled to [0, 1]: a position prior, since faces in AFHQ and CelebA are aligned.
2. The eyes are a pair: of the ``candidates`` strongest local maxima of the
   score, the two that sit on one row, side by side, at a plausible distance,
   with the strongest weaker peak (the paper's "row-wise multiplicity of 2").
   No such pair: nothing is found.
3. Each eye is segmented by ``skimage.segmentation.chan_vese`` in a window
   (``window`` x W square) around its peak, started positive on the window's top
   ``quantile`` of the score. The image segmented is the score itself (segment
   ``"init"``) or the mean HSV value image (after a min-max stretch to [0, 1]) of
   *segment* components (the paper's choice: components that are flat over the
   eyes). The eye is the connected region of the peak's phase that holds the peak.

:func:`choose_roles` picks the roles from a batch of samples without labels:
init sets grow greedily, one component at a time (at most ``max_init``),
segmenting the score; then each single other component is tried as the segment
image against the score. The roles that give the most *consistent* pairs win:
pairs whose offset from one eye to the other lies within ``consistency`` x W of
the median offset over the samples. Eyes keep their spacing wherever the face
sits in the image; pairs of fur, whiskers or edges do not. No position enters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

SCORE = "init"  # segment the init score itself


@dataclass(frozen=True)
class PairRule:
    """What counts as a horizontal pair of peaks, as fractions of the image: rows within ``row_tolerance`` x H,
    centres ``min_separation`` to ``max_separation`` x W apart."""

    row_tolerance: float = 0.08
    min_separation: float = 0.12
    max_separation: float = 0.6


def value_images(parts: np.ndarray) -> np.ndarray:
    """``[K, 3, H, W]`` components -> ``[K, H, W]`` HSV value of each, after stretching it to [0, 1]."""
    from skimage.color import rgb2hsv  # scikit-image: only when segmenting, not when the plugin registers

    out = []
    for part in parts:
        low, high = float(part.min()), float(part.max())
        rgb = (part - low) / (high - low) if high > low else np.zeros_like(part)
        out.append(rgb2hsv(rgb.transpose(1, 2, 0))[..., 2])
    return np.stack(out)


def contrast_energy(parts: np.ndarray) -> np.ndarray:
    """``[K, 3, H, W]`` -> ``[K, H, W]``: each component's squared difference from its own mean colour, summed
    over RGB, divided by its mean over the image (mean 1; a flat component gives zeros)."""
    parts = parts.astype(np.float64)
    energy = ((parts - parts.mean(axis=(2, 3), keepdims=True)) ** 2).sum(axis=1)
    mean = energy.mean(axis=(1, 2), keepdims=True)
    return energy / np.where(mean > 0, mean, 1)


def init_score(parts: np.ndarray, init: list[int], sigma: float) -> np.ndarray:
    """``[H, W]``: the smoothed mean contrast energy of the init components of ``parts`` ``[K, 3, H, W]``."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(contrast_energy(parts[init]).mean(axis=0), sigma)


def score_prior(scores: np.ndarray) -> np.ndarray:
    """``[H, W]`` in [0, 1]: the mean of the init scores ``[S, H, W]`` of S samples, min-max scaled."""
    mean = scores.mean(axis=0)
    span = float(mean.max() - mean.min())
    return (mean - mean.min()) / span if span > 0 else np.ones_like(mean)


def horizontal_pair(score: np.ndarray, candidates: int, rule: PairRule) -> np.ndarray:
    """The two peaks ``[2, (y, x)]`` (left first; pixel indices) of ``score`` ``[H, W]``, among its
    ``candidates`` strongest local maxima off the border, that form a pair by ``rule`` with the strongest
    weaker peak; ``[0, 2]`` when there is none."""
    from skimage.feature import peak_local_max

    h, w = score.shape
    peaks = peak_local_max(score, min_distance=2, num_peaks=candidates, exclude_border=1)
    best, best_value = np.empty((0, 2), dtype=int), -np.inf
    for a, b in combinations(peaks, 2):
        if abs(a[0] - b[0]) > rule.row_tolerance * h:
            continue
        if not rule.min_separation * w <= abs(a[1] - b[1]) <= rule.max_separation * w:
            continue
        value = min(score[tuple(a)], score[tuple(b)])
        if value > best_value:
            best, best_value = np.stack(sorted((a, b), key=lambda p: p[1])), value
    return best


@dataclass(frozen=True)
class Segmentation:
    """One sample: the Chan-Vese phases holding each eye's peak, in their windows ``[H, W]``; the two eye
    regions ``[H, W]``; their centroids ``[2, (y, x)]`` in pixel indices (NaN when no pair)."""

    region: np.ndarray
    eyes: np.ndarray
    centroids: np.ndarray


@dataclass(frozen=True)
class SegmentSettings:
    """``sigma``: smoothing of the init score [pixels]; ``candidates``: peaks the pair is chosen from;
    ``window``: side of the square Chan-Vese runs in around each eye, a fraction of W; ``quantile``: share of
    the window the level set starts positive on; ``mu``: Chan-Vese's length weight; ``iterations``: its most
    iterations; ``rule``: the eye pair."""

    sigma: float = 3.0
    candidates: int = 12
    window: float = 0.3
    quantile: float = 0.25
    mu: float = 0.25
    iterations: int = 200
    rule: PairRule = field(default_factory=PairRule)


def segment_around(image: np.ndarray, score: np.ndarray, peak: np.ndarray,
                   settings: SegmentSettings) -> tuple[np.ndarray, np.ndarray]:
    """Chan-Vese on ``image`` ``[H, W]`` in a window around ``peak`` ``(y, x)``, started on the top of ``score``:
    the phase holding the peak, and its connected region that holds the peak (both ``[H, W]``)."""
    from skimage.measure import label
    from skimage.segmentation import chan_vese

    h, w = image.shape
    half = max(2, int(round(settings.window * w / 2)))
    top, left = max(peak[0] - half, 0), max(peak[1] - half, 0)
    window = (slice(top, min(peak[0] + half + 1, h)), slice(left, min(peak[1] + half + 1, w)))
    local = score[window]
    start = np.where(local >= np.quantile(local, 1 - settings.quantile), 1.0, -1.0)
    phase = chan_vese(image[window], mu=settings.mu, max_num_iter=settings.iterations, init_level_set=start)
    if not phase[peak[0] - top, peak[1] - left]:
        phase = ~phase
    regions = label(phase)
    region, eye = np.zeros((h, w), dtype=bool), np.zeros((h, w), dtype=bool)
    region[window] = phase
    eye[window] = regions == regions[peak[0] - top, peak[1] - left]
    return region, eye


def segment_eyes(parts: np.ndarray, init: list[int], segment: list[int] | str, prior: np.ndarray | None,
                 settings: SegmentSettings) -> Segmentation:
    """One sample's components ``[K, 3, H, W]``: the init score (times ``prior`` ``[H, W]``, if given), its
    :func:`horizontal_pair` of peaks, and each eye by :func:`segment_around` on the score
    (``segment == "init"``) or on the mean value image of ``parts[segment]``."""
    score = init_score(parts, init, settings.sigma)
    if prior is not None:
        score = score * prior
    region, eyes = np.zeros(score.shape, dtype=bool), np.zeros(score.shape, dtype=bool)
    pair = horizontal_pair(score, settings.candidates, settings.rule)
    if not len(pair):
        return Segmentation(region, eyes, np.full((2, 2), np.nan))
    image = score if segment == SCORE else value_images(parts[segment]).mean(axis=0)
    centroids = []
    for peak in pair:
        phase, eye = segment_around(image, score, peak, settings)
        region |= phase
        eyes |= eye
        centroids.append(np.argwhere(eye).mean(axis=0))
    return Segmentation(region, eyes, np.array(centroids))


def sample_prior(parts: np.ndarray, init: list[int], sigma: float) -> np.ndarray:
    """The prior ``[H, W]`` of init components over the components ``[S, K, 3, H, W]`` of S samples."""
    return score_prior(np.stack([init_score(p, init, sigma) for p in parts]))


def consistent_pairs(centroids: np.ndarray, tolerance: float) -> int:
    """How many of the pairs ``[S, 2, 2]`` (NaN: none found) have an offset between their two centroids within
    ``tolerance`` pixels of the median offset: eyes keep their spacing wherever the face is; pairs of fur,
    whiskers or edges do not."""
    found = np.isfinite(centroids).all(axis=(1, 2))
    if not found.any():
        return 0
    offsets = centroids[found, 1] - centroids[found, 0]
    return int((np.linalg.norm(offsets - np.median(offsets, axis=0), axis=1) <= tolerance).sum())


@dataclass(frozen=True)
class RoleChoice:
    """Automatic roles: ``max_init`` init components at most, chosen on at most ``samples`` samples;
    ``consistency``: how close to the median eye-to-eye offset a pair's must lie, a fraction of the width;
    ``prior``: whether the score is weighted by the sample prior."""

    max_init: int = 3
    samples: int = 64
    consistency: float = 0.1
    prior: bool = False


def _consistency(parts: np.ndarray, init: list[int], segment: list[int] | str, choice: RoleChoice,
                 settings: SegmentSettings) -> int:
    prior = sample_prior(parts, init, settings.sigma) if choice.prior else None
    centroids = np.stack([segment_eyes(v, init, segment, prior, settings).centroids for v in parts])
    return consistent_pairs(centroids, choice.consistency * parts.shape[-1])


def choose_roles(parts: np.ndarray, choice: RoleChoice, settings: SegmentSettings, init: list[int] | None = None,
                 segment: list[int] | str | None = None) -> tuple[list[int], list[int] | str]:
    """Roles from components ``[S, K, 3, H, W]`` (see the module doc); a role given is kept as it is."""
    parts = parts[:choice.samples]
    k = parts.shape[1]
    best = -1  # consistent pairs of the chosen init segmenting the score (-1: not counted yet)
    if init is None:
        fixed = [] if segment is None or segment == SCORE else list(segment)
        init = []
        while len(init) < min(choice.max_init, k - 1 - len(fixed)):
            count, extra = max((_consistency(parts, init + [j], segment or SCORE, choice, settings), -j)
                               for j in range(k) if j not in init + fixed)
            if count <= best:
                break
            init, best = init + [-extra], count
    if segment is not None:
        return init, segment
    segment = SCORE
    if best < 0:
        best = _consistency(parts, init, SCORE, choice, settings)
    for j in (j for j in range(k) if j not in init):
        count = _consistency(parts, init, [j], choice, settings)
        if count > best:
            segment, best = [j], count
    return init, segment
