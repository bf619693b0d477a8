"""The covariance null: every branch's samples shuffled independently, on a fixed-size sketch of the responses.

Each branch's flattened response to a sample (D values) is kept as ``r`` numbers: itself when D <= r (exact),
else its product with a seeded Gaussian matrix ``[D, r] / sqrt(r)``, which preserves dot products in expectation
(Johnson-Lindenstrauss). ``sketch [N, K, r]`` holds one layer's K branches. The null shuffles the samples of each
branch independently: it keeps every branch's own responses and breaks only which samples they are paired with.
"""

from __future__ import annotations

import numpy as np
import torch

from probekit.api import permutation_evidence


def projection(width: int, dims: int, seed: int) -> torch.Tensor | None:
    """``[width, dims]`` Gaussian sketch of a ``width``-value response, or ``None`` when it fits as it is."""
    if width <= dims:
        return None
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(width, dims, generator=generator, dtype=torch.float64) / dims ** 0.5


def sketched(responses: torch.Tensor, matrix: torch.Tensor | None, dims: int) -> np.ndarray:
    """``[N, K, dims]`` sketch of ``responses [N, K, D]`` (zero-padded when D < dims)."""
    if matrix is None:
        out = torch.nn.functional.pad(responses.double(), (0, dims - responses.shape[2]))
    else:
        out = responses.double() @ matrix.to(responses.device)
    return out.float().cpu().numpy()


def mean_abs_corr(sketch: np.ndarray) -> float:
    """Mean |F_k . F_l| / (|F_k| |F_l|) over the pairs k != l of ``sketch [N, K, r]`` (NaN with one branch)."""
    flat = sketch.astype(np.float64).transpose(1, 0, 2).reshape(sketch.shape[1], -1)
    gram = flat @ flat.T
    norm = np.sqrt(np.diag(gram))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.abs(gram / np.outer(norm, norm))
    return mean_of_finite(corr[~np.eye(len(corr), dtype=bool)])


def mean_of_finite(values: np.ndarray) -> float:
    """The mean of the finite entries of ``values``; NaN when there are none (a NaN branch, or one branch)."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def shuffled(sketch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``sketch`` with the samples of every branch shuffled independently."""
    n, k = sketch.shape[:2]
    order = rng.permuted(np.tile(np.arange(n), (k, 1)), axis=1).T  # [N, K]
    return sketch[order, np.arange(k)[None, :]]


def evidence(sketch: np.ndarray, permutations: int, resamples: int, level: float,
             rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One layer's sketched mean |corr| (:func:`probekit.api.permutation_evidence`'s dict; two-sided)."""
    return permutation_evidence(lambda rows: mean_abs_corr(sketch[rows]), lambda r: mean_abs_corr(shuffled(sketch, r)),
                                len(sketch), permutations, resamples, level, rng, "two-sided",
                                desc="covariance null")
