"""Linear CKA between two experts over the samples routed to both (their gates both non-zero).

The gated contributions ``x_k = g_k e_k`` of a sparse mixture are zero wherever expert k was not routed, so
two experts routed to different samples have near-orthogonal contributions whatever they compute. CKA over the
co-routed samples asks what they do when both act. Exact, streamed: for every pair ``(j, k)``
``P[j, k] = sum_n a_nk x_nj x_nj^T`` ``[K, K, D, D]``, ``S[j, k] = sum_n a_nk x_nj`` ``[K, K, D]`` and the counts
``C = a^T a`` ``[K, K]`` (``a`` the 0/1 routing), with the cross term ``sum_n x_nj x_nk^T`` the layer's own
cross-products (zero off the co-routed samples). Wider layers take the unbiased minibatch estimate on the
co-routed rows of each batch.
"""

from __future__ import annotations

import numpy as np
import torch

from .cka import minibatch_hsic


def moments(responses: torch.Tensor, gates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(P [K, K, D, D], S [K, K, D], C [K, K])`` of one batch; ``responses`` ``[N, K, D]`` gated contributions,
    ``gates`` ``[N, K]``."""
    routed, x = (gates != 0).double(), responses.double()
    return (torch.einsum("nk,nja,njb->jkab", routed, x, x), torch.einsum("nk,nja->jka", routed, x),
            routed.T @ routed)


def exact(products: np.ndarray, pairs: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``[K, K]`` co-routed CKA from summed :func:`moments` and the layer's ``sum_n z z^T`` ``[K D, K D]``; NaN
    for a pair co-routed on fewer than 2 samples."""
    k, d = sums.shape[0], sums.shape[2]
    blocks = products.reshape(k, d, k, d)
    out = np.full((k, k), np.nan)
    for j in range(k):
        for i in range(k):
            c = counts[j, i]
            if c < 2:
                continue
            mj, mi = sums[j, i] / c, sums[i, j] / c
            cross = blocks[j, :, i, :] - c * np.outer(mj, mi)
            own = np.linalg.norm(pairs[j, i] - c * np.outer(mj, mj))
            other = np.linalg.norm(pairs[i, j] - c * np.outer(mi, mi))
            with np.errstate(invalid="ignore", divide="ignore"):
                out[j, i] = np.sum(cross * cross) / (own * other)
    return out


def minibatch(responses: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """``[2, K, K]`` unbiased HSIC on each pair's co-routed rows of one batch: ``[0, j, k]`` between j and k,
    ``[1, j, k]`` of j with itself (pairs with fewer than 4 such rows add 0)."""
    k = responses.shape[1]
    routed = gates != 0
    out = torch.zeros(2, k, k, dtype=torch.float64, device=responses.device)
    for j in range(k):
        for i in range(j, k):
            rows = routed[:, j] & routed[:, i]
            hsic = minibatch_hsic(responses[rows][:, [j, i]])
            if hsic is not None:
                out[0, j, i] = out[0, i, j] = hsic[0, 1]
                out[1, j, i], out[1, i, j] = hsic[0, 0], hsic[1, 1]
    return out


def from_minibatch(hsic: np.ndarray) -> np.ndarray:
    """``[K, K]`` co-routed CKA from summed :func:`minibatch` values."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return hsic[0] / np.sqrt(np.clip(hsic[1] * hsic[1].T, 0, None))
