"""Matrix-free Hessian estimates (``hessian.mode=estimate``), for selections too large to store or to compute row
by row: only Hessian-vector products (HVPs), by double backward through one gradient graph.

* Block energies ``E_ij = |H_ij|_F^2`` by Hutchinson-style probing: for a Rademacher vector ``v`` supported on block
  ``j`` (``E[v v^T] = I`` there), ``|(H v)_i|^2`` is an unbiased estimate of ``E_ij``. Each probe of each block
  gives one column of estimates; the mean over ``probes`` probes is stored with its standard error.
* The off-block share ``sum_{i != j} E_ij / sum_ij E_ij`` is computed for each probe (one replicate per probe
  index) and stored as the mean and standard error over the replicates.
* The top eigenvalues of each diagonal block ``H_jj`` by Lanczos (``scipy.sparse.linalg.eigsh`` on the block's HVP
  as a linear operator), when asked for (``eigenvalues > 0``).

Cost: ``blocks x probes`` HVPs for the energies, plus about ``lanczos_steps`` per block for the eigenvalues.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .exact import flat_selected, grad_only_for
from .params import ParamBlock, block_slices


@dataclass
class Estimates:
    """Per block pair ``[B, B]`` energy means and standard errors; per probe off-block shares ``[S]``; per diagonal
    block the top eigenvalues ``[B, k]`` (NaN past a block's size or where Lanczos did not converge)."""

    energy: np.ndarray
    energy_se: np.ndarray
    share_replicates: np.ndarray
    eigenvalues: np.ndarray
    hvps: int


class HessianProducts:
    """``H v`` for the mean loss over one batch, from one gradient graph (each product is one backward)."""

    def __init__(self, loss: torch.Tensor, params: list[torch.Tensor], names: list[str],
                 blocks: tuple[ParamBlock, ...], samples: int):
        self.params, self.names, self.blocks, self.samples = params, names, blocks, samples
        grads = torch.autograd.grad(loss, params, create_graph=True)
        self.g = flat_selected(dict(zip(names, grads, strict=True)), blocks, grads[0])
        self.count = 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` over the selection (``v``: ``[P]``), for the mean loss (the summed loss / samples)."""
        self.count += 1
        hv = torch.autograd.grad(self.g, self.params, grad_outputs=v.to(self.g.dtype), retain_graph=True,
                                 allow_unused=True)
        return flat_selected(dict(zip(self.names, hv, strict=True)), self.blocks, self.g).detach() / self.samples


def estimate(loss_of, model: nn.Module, blocks: tuple[ParamBlock, ...], samples: int, probes: int,
             eigenvalues: int, lanczos_steps: int, seed: int, progress: bool = False) -> Estimates:
    """Block energies, off-block share replicates and diagonal-block eigenvalues of the mean-loss Hessian."""
    names = list(dict.fromkeys(b.name for b in blocks))
    slices = list(block_slices(blocks).values())
    total = sum(b.size for b in blocks)
    gen = torch.Generator().manual_seed(seed)
    params_by_name = dict(model.named_parameters())
    with grad_only_for(model, set(names)), torch.enable_grad():
        products = HessianProducts(loss_of(model), [params_by_name[n] for n in names], names, blocks, samples)
        b = len(slices)
        energies = np.zeros((probes, b, b))
        steps = tqdm(total=b * probes, desc="hessian probes", unit="hvp", disable=not progress or None, leave=False)
        for j, cols in enumerate(slices):
            for s in range(probes):
                v = torch.zeros(total, dtype=products.g.dtype)
                v[cols] = torch.randint(0, 2, (cols.stop - cols.start,), generator=gen).to(v.dtype) * 2 - 1
                hv = products(v).double()
                energies[s, :, j] = [float(hv[rows].pow(2).sum()) for rows in slices]
                steps.update()
        steps.close()
        tops = np.stack([_top_eigenvalues(products, cols, total, eigenvalues, lanczos_steps, seed)
                         for cols in tqdm(slices, desc="hessian lanczos", unit="block", disable=not progress or None,
                                          leave=False)]) if eigenvalues else np.full((b, 0), np.nan)
    diagonal = np.einsum("sii->s", energies)
    totals = energies.sum((1, 2))
    shares = np.where(totals > 0, (totals - diagonal) / np.where(totals > 0, totals, 1), np.nan)
    se = energies.std(0, ddof=1) / np.sqrt(probes) if probes > 1 else np.full((b, b), np.nan)
    return Estimates(energies.mean(0), se, shares, tops, products.count)


def _top_eigenvalues(products: HessianProducts, cols: slice, total: int, k: int, steps: int, seed: int) -> np.ndarray:
    """The ``k`` largest (algebraic) eigenvalues of the diagonal block ``H[cols, cols]``, descending, by Lanczos."""
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    size = cols.stop - cols.start
    out = np.full(k, np.nan)

    def matvec(x):
        v = torch.zeros(total, dtype=products.g.dtype)
        v[cols] = torch.from_numpy(np.asarray(x, dtype=np.float64).ravel()).to(v.dtype)
        return products(v)[cols].double().numpy()

    if size <= k + 1:  # a tiny block: its dense form costs no more than Lanczos
        dense = np.stack([matvec(e) for e in np.eye(size)], axis=1)
        values = np.sort(np.linalg.eigvalsh((dense + dense.T) / 2))[::-1]
        out[:min(k, size)] = values[:k]
        return out
    operator = LinearOperator((size, size), matvec=matvec, dtype=np.float64)
    start = np.random.default_rng(seed).standard_normal(size)
    try:
        values = eigsh(operator, k=k, which="LA", v0=start, maxiter=steps, ncv=min(size, max(2 * k + 1, 20)),
                       return_eigenvectors=False)
    except ArpackNoConvergence as exc:
        values = exc.eigenvalues
    values = np.sort(np.asarray(values, dtype=np.float64))[::-1]
    out[:len(values)] = values[:k]
    return out
