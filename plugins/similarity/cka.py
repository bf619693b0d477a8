"""Linear CKA between the branches of a layer, streamed: exact from the centred cross-covariance, and the unbiased
minibatch estimate from per-batch HSIC (Nguyen, Raghu & Kornblith 2021).

For branch responses ``X_k`` ``[N, D]`` (centred over samples), linear CKA (Kornblith et al. 2019) is
``|X_k^T X_l|_F^2 / (|X_k^T X_k|_F |X_l^T X_l|_F)``: 1 for responses equal up to rotation and scale, near 0 for
unrelated ones. The exact form needs the ``[K D, K D]`` cross-covariance of the layer's concatenated responses,
accumulated batch by batch; the minibatch form needs only each batch's ``[n, n]`` Gram matrices, so it works for
responses of any width: ``CKA = sum_b HSIC_1(K_b, L_b) / sqrt(sum_b HSIC_1(K_b, K_b) sum_b HSIC_1(L_b, L_b))``
with Song et al.'s unbiased ``HSIC_1`` (batches of fewer than 4 samples are skipped).
"""

from __future__ import annotations

import numpy as np
import torch


def cross_products(responses: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_n z w^T`` ``[K D, J D']`` of one batch, ``z`` and ``w`` a sample's concatenated responses of
    ``responses`` ``[N, K, D]`` and ``other`` ``[N, J, D']`` (default: ``responses`` itself)."""
    z = responses.flatten(1).double()
    return z.T @ (z if other is None else other.flatten(1).double())


def centred(products: np.ndarray, sums: np.ndarray, other_sums: np.ndarray, count: int) -> np.ndarray:
    """The centred cross-covariance ``sum_n (z - mean z)(w - mean w)^T`` from ``sum_n z w^T`` and the sums."""
    return products - np.outer(sums, other_sums) / max(count, 1)


def block_energy(covariance: np.ndarray, branches: int, other_branches: int) -> np.ndarray:
    """``[K, J]``: ``|X_k^T Y_j|_F^2`` for every block of a centred ``[K D, J D']`` cross-covariance."""
    blocks = covariance.reshape(branches, covariance.shape[0] // branches, other_branches,
                                covariance.shape[1] // other_branches)
    return np.einsum("kalb,kalb->kl", blocks, blocks)


def exact_cka(products: np.ndarray, sums: np.ndarray, count: int, branches: int) -> np.ndarray:
    """``[K, K]`` linear CKA from the accumulated :func:`cross_products` of ``count`` samples."""
    energy = block_energy(centred(products, sums, sums, count), branches, branches)
    norms = np.sqrt(np.diag(energy))
    with np.errstate(invalid="ignore", divide="ignore"):
        return energy / np.outer(norms, norms)


def minibatch_hsic(responses: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor | None:
    """``[K, J]`` unbiased ``HSIC_1`` between every branch of ``responses`` ``[N, K, D]`` and every branch of
    ``other`` ``[N, J, D']`` (default: ``responses`` itself) on one batch (linear kernels); ``None`` for a batch of
    fewer than 4 samples."""
    n = responses.shape[0]
    if n < 4:
        return None
    grams, others = _grams(responses), _grams(other) if other is not None else None
    others = grams if others is None else others
    trace = torch.einsum("kij,lij->kl", grams, others)
    rows, other_rows = grams.sum(2), others.sum(2)  # [K, N], [J, N]
    hsic = (trace + torch.outer(rows.sum(1), other_rows.sum(1)) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * rows @ other_rows.T)
    return hsic / (n * (n - 3))


def _grams(responses: torch.Tensor) -> torch.Tensor:
    """``[K, N, N]`` linear Gram matrices of each branch with zeroed diagonals; ``responses`` ``[N, K, D]``."""
    x = responses.transpose(0, 1).double()
    grams = x @ x.transpose(1, 2)
    return grams - torch.diag_embed(torch.diagonal(grams, dim1=1, dim2=2))


def minibatch_cka(hsic: np.ndarray, own: np.ndarray | None = None, other: np.ndarray | None = None) -> np.ndarray:
    """``[K, J]`` CKA from summed :func:`minibatch_hsic`: within a layer (``own`` and ``other`` default to the
    diagonal of ``hsic``), or across models (``own``: the probed branches' ``[K, K]`` sum, ``other``: the reference's
    ``[J, J]``)."""
    a = np.sqrt(np.clip(np.diag(hsic if own is None else own), 0, None))
    b = np.sqrt(np.clip(np.diag(hsic if other is None else other), 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        return hsic / np.outer(a, b)


def self_energy(products: np.ndarray, sums: np.ndarray, count: int, branches: int) -> np.ndarray:
    """``[K]``: ``|X_k^T X_k|_F^2`` of each branch, from the accumulated :func:`cross_products`."""
    return np.diag(block_energy(centred(products, sums, sums, count), branches, branches))


def cross_cka(cross: np.ndarray, sums: np.ndarray, other_sums: np.ndarray, energy: np.ndarray,
              other_energy: np.ndarray, count: int) -> np.ndarray:
    """``[K, J]`` exact linear CKA between the K probed and the J reference branches of a layer: ``cross`` is
    ``sum_n z w^T`` ``[K D, J D']`` of the two models' concatenated responses, ``sums`` and ``other_sums`` their
    sums, ``energy`` and ``other_energy`` each side's :func:`self_energy`."""
    between = block_energy(centred(cross, sums, other_sums, count), len(energy), len(other_energy))
    with np.errstate(invalid="ignore", divide="ignore"):
        return between / np.sqrt(np.outer(energy, other_energy))
