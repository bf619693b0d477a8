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

from probekit.api import dispatch_counts, dispatch_entropy as label_entropy, permutation_evidence, permute_within, \
    relative_norms


def relative(norm: np.ndarray, parts: list[slice]) -> np.ndarray:
    """``[B]`` each branch's norm over the samples (``norm [B]``) relative to the largest branch of its layer."""
    out = np.empty_like(norm)
    for part in parts:
        out[part] = relative_norms(norm[part])
    return out


def share(norm: np.ndarray, parts: list[slice]) -> np.ndarray:
    """``[B]`` each branch's norm over the samples (``norm [B]``) as a share of its layer's summed norms."""
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
                  rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    """``{"share": ..., "relative": ...}`` (:func:`probekit.api.permutation_evidence`'s dicts, ``[B]``): the norm
    shares with their test (small p: weaker than branch exchange gives) and the relative norms; bootstrap
    intervals over samples for both."""
    squares = norms.astype(np.float64) ** 2
    b = squares.shape[1]

    def both(sq: np.ndarray) -> np.ndarray:
        norm = np.sqrt(sq.sum(0))  # [B] over the samples of the squared per-sample norms sq [N, B]
        return np.concatenate([share(norm, parts), relative(norm, parts)])

    found = permutation_evidence(lambda rows: both(squares[rows]), lambda r: both(permute_within(squares, r, parts)),
                                 len(squares), permutations, resamples, level, rng, "less", desc="activity null")
    return {"share": {k: v[:b] for k, v in found.items()}, "relative": {k: v[b:] for k, v in found.items()}}


def routing_evidence(gates: np.ndarray, permutations: int, resamples: int, level: float,
                     rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One gated layer's dispatch entropy (:func:`probekit.api.permutation_evidence`'s dict; small p: less balanced
    than random routing at the same per-sample load)."""
    return permutation_evidence(lambda rows: dispatch_entropy(gates[rows]),
                                lambda r: dispatch_entropy(permute_within(gates, r)), len(gates), permutations,
                                resamples, level, rng, "less", desc="routing null")


def class_routing_evidence(gates: np.ndarray, labels: np.ndarray, n_classes: int, permutations: int,
                           resamples: int, level: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One gated layer's ``H(class | expert)`` in nats (:func:`probekit.api.dispatch_entropy`; each sample counts
    for the expert of its largest gate), with the classes shuffled over the samples as the null (small p: the
    experts' traffic is more class-specific than routing that ignores the classes) and a bootstrap interval."""
    return permutation_evidence(lambda rows: label_entropy(dispatch_counts(gates[rows], labels[rows], n_classes)),
                                lambda r: label_entropy(dispatch_counts(gates, r.permutation(labels), n_classes)),
                                len(gates), permutations, resamples, level, rng, "less", desc="class routing null")
