"""Evidence for activity: intervals on the relative norms, and nulls that exchange branches within a sample.

``norms [N, B]``: each branch's response norm on each sample; ``parts``: the branches of each layer. The null
exchanges the branches of a layer independently in every sample: it keeps each sample's set of responses and
breaks only which branch gave which, so under it every branch of a layer is equally strong. A branch is weaker
than that (``norm_share_p``, one-sided) when its share of the layer's summed norms is below what exchange
gives. On gated layers, ``gates [N, K]`` go through the same exchange: random routing at the same per-sample
load.
"""

from __future__ import annotations

import numpy as np

from probekit.api import bootstrap_ci, permutation_null, permutation_p, permute_within, relative_norms


def relative(squares: np.ndarray, parts: list[slice]) -> np.ndarray:
    """``[B]`` norm over the samples of ``squares [N, B]`` (squared per-sample norms), relative to the largest
    branch of its layer."""
    norm = np.sqrt(squares.sum(0))
    out = np.empty_like(norm)
    for part in parts:
        out[part] = relative_norms(norm[part])
    return out


def share(squares: np.ndarray, parts: list[slice]) -> np.ndarray:
    """``[B]`` each branch's norm over the samples of ``squares [N, B]``, as a share of its layer's summed norms."""
    norm = np.sqrt(squares.sum(0))
    out = np.empty_like(norm)
    for part in parts:
        out[part] = norm[part] / max(float(norm[part].sum()), 1e-300)
    return out


def dispatch_entropy(gates: np.ndarray) -> float:
    """Entropy of a layer's load (each expert's share of the summed gate values over ``gates [N, K]``), divided
    by log K: 1 when every expert carries the same load, 0 when one carries it all."""
    load = gates.sum(0)
    share = load / max(float(load.sum()), 1e-12)
    return float(-(share * np.log(np.maximum(share, 1e-12))).sum() / np.log(max(len(share), 2)))


def norm_evidence(norms: np.ndarray, parts: list[slice], permutations: int, resamples: int, level: float,
                  rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``{"share": [B], "p", "null": [B], "share_ci", "relative_ci": [B, 2]}``: the norm shares, their p-values
    (small: weaker than branch exchange gives) and null means, and bootstrap intervals over samples of the shares
    and of the relative norms."""
    squares = norms.astype(np.float64) ** 2
    observed = share(squares, parts)
    if permutations:
        null = permutation_null(lambda r: share(permute_within(squares, r, parts), parts), permutations, rng,
                                "activity null")
        p, null_mean = permutation_p(observed, null, "less"), null.mean(0)
    else:
        p = null_mean = np.full(observed.shape, np.nan)
    b = len(observed)
    ci = bootstrap_ci(lambda rows: np.concatenate([share(squares[rows], parts), relative(squares[rows], parts)]),
                      len(squares), resamples, rng, level)
    return {"share": observed, "p": p, "null": null_mean, "share_ci": ci[:b], "relative_ci": ci[b:]}


def routing_evidence(gates: np.ndarray, permutations: int, resamples: int, level: float,
                     rng: np.random.Generator) -> dict[str, float | np.ndarray]:
    """One gated layer's dispatch entropy, its p-value (small: less balanced than random routing at the same
    per-sample load), the null's mean and a bootstrap interval ``[2]``."""
    observed = dispatch_entropy(gates)
    if permutations:
        null = permutation_null(lambda r: dispatch_entropy(permute_within(gates, r)), permutations, rng,
                                "routing null")
        p, null_mean = float(permutation_p(observed, null, "less")), float(null.mean())
    else:
        p = null_mean = float("nan")
    ci = bootstrap_ci(lambda rows: dispatch_entropy(gates[rows]), len(gates), resamples, rng, level)
    return {"entropy": observed, "p": p, "null": null_mean, "ci": ci}
