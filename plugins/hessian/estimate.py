"""Matrix-free Hessian estimates (``hessian.mode=estimate``), for selections too large to store or to compute row
by row: only Hessian-vector products (HVPs).

* HVPs are forward-over-reverse (``torch.func.jvp`` of ``torch.func.grad``), vmapped over a chunk of directions
  sized to the memory budget; a model ``torch.func`` cannot vmap falls back to one double backward per direction.
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
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap
from tqdm import tqdm

from .exact import flat_selected, grad_only_for, MemoryPlan, saved_bytes
from .params import ParamBlock, block_slices

MOST_DIRECTIONS = 16  # directions per vmapped chunk: past this, CPU throughput stops improving


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
    """``H V`` for the mean loss over one batch: ``V`` is ``[k, P]``, ``k`` directions over the selection."""

    def __init__(self, loss_of, model: nn.Module, blocks: tuple[ParamBlock, ...], samples: int):
        self.model, self.blocks, self.samples, self.loss_of = model, blocks, samples, loss_of
        names = list(dict.fromkeys(b.name for b in blocks))
        self.params = {n: p.detach() for n, p in model.named_parameters() if n in names}
        self.gradient = grad(lambda ps: loss_of(lambda *a: functional_call(model, ps, a)))
        self.vectorized, self.graph, self.count = True, None, 0

    def _tangents(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[k, P]`` over the selection -> per parameter ``[k, *shape]``, zero outside the selected elements."""
        out = {n: p.new_zeros(len(v), p.numel()) for n, p in self.params.items()}
        start = 0
        for block in self.blocks:
            out[block.name][:, block.start:block.stop] = v[:, start:start + block.size]
            start += block.size
        return {n: t.view(len(v), *self.params[n].shape) for n, t in out.items()}

    def _double_backward(self, tangents: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
        """The fallback: one backward per direction through one retained gradient graph."""
        if self.graph is None:
            with torch.enable_grad():
                params = [dict(self.model.named_parameters())[n] for n in self.params]
                self.graph = params, torch.autograd.grad(self.loss_of(self.model), params, create_graph=True)
        params, grads = self.graph
        rows = [torch.autograd.grad(grads, params, [tangents[n][r] for n in self.params], retain_graph=True,
                                    allow_unused=True) for r in range(k)]
        return {n: torch.stack([row[i] if row[i] is not None else torch.zeros_like(p) for row in rows])
                for i, (n, p) in enumerate(zip(self.params, params, strict=True))}

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """``[k, P]`` -> ``H v`` ``[k, P]`` for the mean loss (the summed loss / samples)."""
        tangents = self._tangents(v.to(next(iter(self.params.values())).dtype))
        self.count += len(v)
        if self.vectorized:
            try:
                with warnings.catch_warnings():  # torch's own forward-AD decompositions still use torch.jit.script
                    warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
                    hv = vmap(lambda t: jvp(self.gradient, (self.params,), (t,))[1])(tangents)
            except RuntimeError:  # not vmappable (in-place updates of captured tensors, data-dependent Python)
                self.vectorized = False
        if not self.vectorized:
            hv = self._double_backward(tangents, len(v))
        return flat_selected(hv, self.blocks, v, lead=(len(v),)).detach() / self.samples


def estimate(loss_of, model: nn.Module, blocks: tuple[ParamBlock, ...], samples: int, probes: int,
             eigenvalues: int, lanczos_steps: int, seed: int, max_time: float = math.inf,
             plan: MemoryPlan | None = None, progress: bool = False) -> Estimates:
    """Block energies, off-block share replicates and diagonal-block eigenvalues of the mean-loss Hessian.

    ``loss_of(model)`` is the summed loss over ``samples`` samples; ``probes`` is the most rounds, fewer when
    another round would pass ``max_time`` seconds (at least 2); ``plan`` sizes the vmapped chunks."""
    slices = list(block_slices(blocks).values())
    b, total = len(slices), sum(block.size for block in blocks)
    ids = torch.repeat_interleave(torch.arange(b), torch.tensor([s.stop - s.start for s in slices]))
    gen = torch.Generator().manual_seed(seed)
    with grad_only_for(model, {block.name for block in blocks}), torch.enable_grad():
        products = HessianProducts(loss_of, model, blocks, samples)
        chunk = _directions_per_chunk(plan, loss_of, model, total)
        energies = np.zeros((probes, b, b))
        rounds, began = probes, time.perf_counter()
        steps = tqdm(total=b * rounds, desc="hessian probes", unit="hvp", disable=not progress or None, leave=False)
        for s in range(probes):
            for j0 in range(0, b, chunk):
                cols = slices[j0:j0 + chunk]
                v = torch.zeros(len(cols), total, dtype=torch.float64)
                for r, c in enumerate(cols):
                    v[r, c] = torch.randint(0, 2, (c.stop - c.start,), generator=gen).double() * 2 - 1
                hv = products(v).double()
                energies[s, :, j0:j0 + len(cols)] = hv.new_zeros(len(cols), b).index_add_(1, ids, hv ** 2).T.numpy()
                steps.update(len(cols))
                if s == 0 and j0 == 0:  # the plan: as many rounds as fit the budget, 2 to probes
                    per_round = (time.perf_counter() - began) * b / len(cols)
                    fit = max_time / per_round if per_round > 0 else math.inf
                    rounds = int(min(probes, max(2, math.floor(fit)))) if math.isfinite(fit) else probes
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


def _directions_per_chunk(plan: MemoryPlan | None, loss_of, model: nn.Module, total: int) -> int:
    """How many HVP directions one vmapped call takes: a forward-over-reverse product keeps about three copies of
    the forward's saved activations per direction, plus the direction and its product."""
    if plan is None:
        return MOST_DIRECTIONS
    per_direction = 3 * saved_bytes(lambda: loss_of(model)) + 3 * 8 * total
    return plan.chunk(per_direction, per_direction, "Hessian-vector products", MOST_DIRECTIONS)


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
