"""Routing against a labelling of the samples: which expert each sample went to, and how mixed each expert's
traffic is over the labels (Chen et al. 2022's dispatch entropy, with their clusters as the labels)."""

from __future__ import annotations

import numpy as np


def dispatch_counts(gates: np.ndarray, labels: np.ndarray, n_labels: int) -> np.ndarray:
    """``[L, K]`` samples of each label dispatched to each expert: ``gates [N, K]`` (0 where the router skipped
    an expert; each sample counts once, for its largest gate), ``labels [N]`` in ``0..L-1``."""
    counts = np.zeros((n_labels, gates.shape[1]), dtype=np.int64)
    np.add.at(counts, (labels, gates.argmax(1)), 1)
    return counts


def dispatch_entropy(counts: np.ndarray) -> float:
    """``H(label | expert)`` in nats from ``counts [L, K]``: ``-sum_m (n_m / n) sum_k (n_km / n_m) log(n_km / n_m)``
    over the experts that received data. 0 when every expert receives a single label; ``log L`` when every
    expert's traffic has the labels' overall mix, with equally common labels."""
    load = counts.sum(0)
    used = load > 0
    share = counts[:, used] / load[used]
    terms = np.where(share > 0, share * np.log(np.where(share > 0, share, 1)), 0.0)
    return float(-(load[used] / load.sum() * terms.sum(0)).sum())
