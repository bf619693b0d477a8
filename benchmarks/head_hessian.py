"""Block energies of the Hessian over attention heads: probekit's one set of probes (K products a round) against
curvlinops' per-block operators (one ``SubmatrixLinearOperator`` per block pair: K^2 products a round).

Two ``nn.MultiheadAttention`` layers (width 64, 8 heads each: K = 16 head blocks, each head's rows of
``in_proj_weight`` and columns of ``out_proj.weight``, 2,048 parameters a head, 32,768 in all: the exact matrix
would take 8.6 GB), random weights, 64 random samples of 8 tokens, the mean cross-entropy over 5 classes. Both
estimate every ``|H_ij|_F^2`` with ``--probes m`` Rademacher probes of each block: probekit
(:func:`probekit_plugins.hessian.estimate.estimate`, what ``hessian.mode=estimate`` runs) multiplies the Hessian by
one probe of block j at a time and reads all K row blocks ``H_ij v_j`` of the product; curvlinops'
``hutchinson_squared_fro`` on ``SubmatrixLinearOperator(HessianLinearOperator, rows_i, cols_j)`` multiplies by
the whole Hessian for every pair. Prints products, times, their ratio, and how far apart the two estimates are in
their standard errors. Needs ``pip install curvlinops-for-pytorch`` (the ``bench`` extra).

    python benchmarks/head_hessian.py [--probes 4] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from probekit.models.branches import DiscoveryConfig, discover
from probekit_plugins.hessian.estimate import estimate
from probekit_plugins.hessian.params import block_slices, select_params

WIDTH, HEADS, TOKENS, CLASSES, SAMPLES = 64, 8, 8, 5, 64
SELECTED = "first.in_proj_weight,first.out_proj.weight,second.in_proj_weight,second.out_proj.weight"


class TwoAttentionLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.MultiheadAttention(WIDTH, HEADS, batch_first=True)
        self.second = nn.MultiheadAttention(WIDTH, HEADS, batch_first=True)
        self.head = nn.Linear(WIDTH * TOKENS, CLASSES)

    def forward(self, x):
        x = x + self.first(x, x, x, need_weights=False)[0]
        x = x + self.second(x, x, x, need_weights=False)[0]
        return self.head(x.flatten(1))


def curvlinops_energies(model, blocks, x, y, probes: int) -> tuple[np.ndarray, int]:
    """``([K, K] energies, products)`` by one Hutchinson estimate per block pair."""
    from curvlinops import HessianLinearOperator, SubmatrixLinearOperator, hutchinson_squared_fro

    params = dict(model.named_parameters())
    names = list(dict.fromkeys(block.name for block in blocks))
    offsets = dict(zip(names, np.cumsum([0] + [params[n].numel() for n in names[:-1]]), strict=True))
    index = {}
    for block in blocks:
        index.setdefault(block.branch, []).extend((offsets[block.name] + block.elements()).tolist())
    hessian = HessianLinearOperator(model, nn.CrossEntropyLoss(), [params[n] for n in names], [(x, y)],
                                    check_deterministic=False)
    branches = list(index)
    energies = np.zeros((len(branches), len(branches)))
    products = 0
    for i, row in enumerate(branches):
        for j, col in enumerate(branches):
            block = SubmatrixLinearOperator(hessian, index[row], index[col])
            energies[i, j] = float(hutchinson_squared_fro(block, probes))
            products += probes
    return energies, products


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = TwoAttentionLayers().eval()
    branchset = discover(model, DiscoveryConfig())  # swaps each attention for its projected form, in place
    blocks = select_params(model, branchset, SELECTED)
    k, total = len(block_slices(blocks)), sum(block.size for block in blocks)
    x, y = torch.randn(SAMPLES, TOKENS, WIDTH), torch.arange(SAMPLES) % CLASSES
    print(f"{k} head blocks, {total:,} parameters, {SAMPLES} samples, {args.probes} probes of each block, "
          f"{args.threads} threads")

    def loss_of(m):
        return nn.functional.cross_entropy(m(x), y, reduction="sum")

    began = time.perf_counter()
    ours = estimate(loss_of, model, blocks, SAMPLES, args.probes, 0, 0, seed=0)
    ours_time = time.perf_counter() - began
    print(f"probekit   {ours.hvps:6d} Hessian-vector products (K m)   {ours_time:7.2f} s")
    try:
        began = time.perf_counter()
        theirs, products = curvlinops_energies(model, blocks, x, y, args.probes)
    except ImportError:
        print("curvlinops is not installed: pip install curvlinops-for-pytorch")
        return
    theirs_time = time.perf_counter() - began
    print(f"curvlinops {products:6d} Hessian-vector products (K^2 m) {theirs_time:7.2f} s")
    z = np.abs(theirs - ours.energy) / np.where(ours.energy_se > 0, ours.energy_se, np.inf)
    print(f"ratio: {products / ours.hvps:.0f}x the products, {theirs_time / ours_time:.1f}x the time; the two "
          f"estimates differ by a median {np.median(z):.2f} (max {z.max():.2f}) of probekit's standard errors")


if __name__ == "__main__":
    main()
