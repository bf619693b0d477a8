"""Matrix-free Hessian estimates (``hessian.mode=estimate``), for selections too large to store or to compute row
by row: only Hessian-vector products (HVPs).

* HVPs by double backward through one retained gradient graph (:class:`HessianProducts`).
* Block energies ``E_ij = |H_ij|_F^2`` by Hutchinson-style probing: for a Rademacher vector ``v`` supported on block
  ``j`` (``E[v v^T] = I`` there), ``|(H v)_i|^2`` is an unbiased estimate of ``E_ij``. One *round* probes every
  block once (``B`` HVPs); the mean over the rounds is stored with its standard error.
* Rounds stop at ``probes``, or earlier once another round would pass ``max_time`` seconds, but never below 2
  (a standard error needs two); the first chunk's time sets the plan, shown as the progress bar's ETA.
* The off-block share ``sum_{i != j} E_ij / sum_ij E_ij`` is computed for each round (one replicate per round) and
  stored as the mean and standard error over the replicates.
* The top eigenvalues of each diagonal block ``H_jj`` by Lanczos (``scipy.sparse.linalg.eigsh`` on the block's HVP
  as a linear operator), when asked for (``eigenvalues > 0``).

Cost: ``blocks x rounds`` HVPs for the energies, plus about ``lanczos_steps`` per block for the eigenvalues.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm  # (renders as a widget in a notebook)

from .exact import NO_ETA, flat_selected, grad_only_for
from .params import ParamBlock, block_slices

CHUNK = 16  # directions per call: the progress bar and the time plan move in these steps


@dataclass
class Estimates:
    """Per block pair ``[B, B]`` energy means and standard errors; per round off-block shares ``[S]``; per diagonal
    block the top eigenvalues ``[B, k]`` (NaN past a block's size or where Lanczos did not converge)."""

    energy: np.ndarray
    energy_se: np.ndarray
    share_replicates: np.ndarray
    eigenvalues: np.ndarray
    hvps: int


class HessianProducts:
    """``H V`` for the mean loss over one batch: ``V`` is ``[k, P]``, ``k`` directions over the selection; one
    backward per direction through one retained gradient graph (double backward).

    Forward-over-reverse (``torch.func.jvp`` of ``grad``, vmapped) was 2.3x faster per product on a ResNeXt, but
    4x slower and 5 GiB per direction on the bundled 16-branch ResNet: its memory cannot be planned ahead."""

    def __init__(self, loss_of, model: nn.Module, blocks: tuple[ParamBlock, ...], samples: int):
        self.blocks, self.samples, self.count = blocks, samples, 0
        by_name = dict(model.named_parameters())
        self.names = list(dict.fromkeys(b.name for b in blocks))
        self.params = [by_name[n] for n in self.names]
        grads = torch.autograd.grad(loss_of(model), self.params, create_graph=True)
        self.g = flat_selected(dict(zip(self.names, grads, strict=True)), blocks, grads[0])  # [P], with its graph

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """``[k, P]`` -> ``H v`` ``[k, P]`` for the mean loss (the summed loss / samples)."""
        self.count += len(v)
        rows = []
        for row in v.to(self.g.dtype):
            hv = torch.autograd.grad(self.g, self.params, grad_outputs=row, retain_graph=True, allow_unused=True)
            rows.append(flat_selected(dict(zip(self.names, hv, strict=True)), self.blocks, self.g))
        return torch.stack(rows).detach() / self.samples


def affordable_samples(loss_of_first, model: nn.Module, blocks: tuple[ParamBlock, ...], most: int,
                       max_time: float) -> int:
    """How many samples (1 to ``most``) keep the estimate's two probe rounds within ``max_time``: one sample's
    gradient graph and one product are timed (``loss_of_first(model)``: the loss of the first sample), and the cost
    grows with the sample count. Larger inputs (224 px through a ResNeXt-50) get fewer samples."""
    slices = list(block_slices(blocks).values())
    total = sum(block.size for block in blocks)
    with grad_only_for(model, {block.name for block in blocks}), torch.enable_grad():
        began = time.perf_counter()
        products = HessianProducts(loss_of_first, model, blocks, 1)
        built = time.perf_counter()
        products(torch.ones(1, total))
        per_product = time.perf_counter() - built
    per_sample = (built - began) + 2 * len(slices) * per_product  # graph + two rounds of one product per block
    return int(min(most, max(1, 0.8 * max_time // per_sample)))


def estimate(loss_of, model: nn.Module, blocks: tuple[ParamBlock, ...], samples: int, probes: int,
             eigenvalues: int, lanczos_steps: int, seed: int, max_time: float = math.inf,
             progress: bool = False) -> Estimates:
    """Block energies, off-block share replicates and diagonal-block eigenvalues of the mean-loss Hessian.

    ``loss_of(model)`` is the summed loss over ``samples`` samples; ``probes`` is the most rounds, fewer when
    another round would pass ``max_time`` seconds (at least 2)."""
    slices = list(block_slices(blocks).values())
    b, total = len(slices), sum(block.size for block in blocks)
    ids = torch.repeat_interleave(torch.arange(b), torch.tensor([s.stop - s.start for s in slices]))
    gen = torch.Generator().manual_seed(seed)
    with grad_only_for(model, {block.name for block in blocks}), torch.enable_grad():
        products = HessianProducts(loss_of, model, blocks, samples)
        energies = np.zeros((probes, b, b))
        rounds, began = probes, time.perf_counter()
        budget = f" (at most {max_time:.0f} s)" if math.isfinite(max_time) else ""
        steps = tqdm(total=b * rounds, desc=f"hessian probes{budget}", unit="hvp", disable=not progress or None,
                     leave=False, bar_format=NO_ETA)  # a first ETA, warm-up included, overstates the run
        for s in range(probes):
            for j0 in range(0, b, CHUNK):
                cols = slices[j0:j0 + CHUNK]
                v = torch.zeros(len(cols), total, dtype=torch.float64)
                for r, c in enumerate(cols):
                    v[r, c] = torch.randint(0, 2, (c.stop - c.start,), generator=gen).double() * 2 - 1
                hv = products(v).double()
                energies[s, :, j0:j0 + len(cols)] = hv.new_zeros(len(cols), b).index_add_(1, ids, hv ** 2).T.numpy()
                steps.update(len(cols))
                if s == 0 and j0 == 0:  # the plan: as many rounds as fit the budget, 2 to probes
                    per_round = (time.perf_counter() - began) * b / len(cols)
                    if math.isfinite(max_time) and per_round > 0:
                        rounds = int(min(probes, max(2, max_time // per_round)))
                    steps.total = b * rounds
                    steps.refresh()
            if s + 1 >= rounds:
                break
        steps.close()
        energies = energies[:rounds]
        tops = np.stack([_top_eigenvalues(products, cols, total, eigenvalues, lanczos_steps, seed)
                         for cols in tqdm(slices, desc="hessian lanczos", unit="block", disable=not progress or None,
                                          leave=False)]) if eigenvalues else np.full((b, 0), np.nan)
    diagonal = np.einsum("sii->s", energies)
    totals = energies.sum((1, 2))
    shares = np.where(totals > 0, (totals - diagonal) / np.where(totals > 0, totals, 1), np.nan)
    se = energies.std(0, ddof=1) / np.sqrt(rounds)
    return Estimates(energies.mean(0), se, shares, tops, products.count)


def _top_eigenvalues(products: HessianProducts, cols: slice, total: int, k: int, steps: int, seed: int) -> np.ndarray:
    """The ``k`` largest (algebraic) eigenvalues of the diagonal block ``H[cols, cols]``, descending, by Lanczos."""
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    size = cols.stop - cols.start
    out = np.full(k, np.nan)

    def matvec(x):
        v = torch.zeros(1, total, dtype=torch.float64)
        v[0, cols] = torch.from_numpy(np.asarray(x, dtype=np.float64).ravel())
        return products(v)[0, cols].double().numpy()

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
