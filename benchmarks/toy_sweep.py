"""The batched toy trainer against the plain PyTorch way: one network at a time.

Plain way: for each (M, trial), an ``nn.Module`` of M LeakyReLU perceptron
branches trained with autograd and ``torch.optim.SGD``, the loop every toy
script writes. Batched: ``probekit.zoo.toy_sweep.train`` on all networks at once.
Both train the same networks from the same initial parameters for the same
steps; we print seconds per network and the speedup (target: at least 100x).

    python benchmarks/toy_sweep.py [--trials 10] [--steps 1000]
"""

from __future__ import annotations

import argparse
import time

import torch

from probekit.zoo.architectures import branched_perceptron
from probekit.run.datasets import TOY_POINTS
from probekit.zoo.toy_sweep import FlatNetworks, SweepConfig, initial_parameters, run_sweep, train

SUBSET = (2, 10, 30)


def plain(config: SweepConfig) -> float:
    xs, ys = TOY_POINTS[config.task]
    x, y = torch.tensor(xs)[:, None], torch.tensor(ys)[:, None]
    start = time.perf_counter()
    for m in config.branches:
        w0, b0 = initial_parameters(config, m)
        for trial in range(config.trials):
            model = branched_perceptron(m)
            with torch.no_grad():
                for k, branch in enumerate(model.branches):
                    branch.linear.weight.fill_(float(w0[trial, k]))
                    branch.linear.bias.fill_(float(b0[trial, k]))
            optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
            for _ in range(config.steps):
                optimizer.zero_grad()
                (0.5 * (model(x) - y).pow(2).sum()).backward()
                optimizer.step()
    return time.perf_counter() - start


def batched(config: SweepConfig) -> float:
    xs, ys = TOY_POINTS[config.task]
    inits = [initial_parameters(config, m) for m in config.branches]
    w = torch.cat([p[0].reshape(-1) for p in inits])
    b = torch.cat([p[1].reshape(-1) for p in inits])
    start = time.perf_counter()
    train(w, b, torch.tensor(xs), torch.tensor(ys), FlatNetworks(config.branches, config.trials), config.steps,
          config.lr)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    subset = SweepConfig(task="toy1", branches=SUBSET, trials=args.trials, steps=args.steps)
    n = len(SUBSET) * args.trials
    plain_s, batched_s = plain(subset), batched(subset)
    print(f"subset M={SUBSET}, {args.trials} trials each ({n} networks), {args.steps} steps:")
    print(f"  plain loop {plain_s:7.2f} s ({plain_s / n * 1000:7.1f} ms/network)   batched {batched_s:6.3f} s   "
          f"speedup {plain_s / batched_s:7.0f}x")
    full = SweepConfig(task="toy1")
    start = time.perf_counter()
    run_sweep(full, progress=False)
    full_s = time.perf_counter() - start
    networks = len(full.branches) * full.trials
    per_network_plain = plain_s / n * full.steps / args.steps  # the plain loop's cost scaled to 5,000 steps
    print(f"full toy1 sweep, M=2..30 x 1000 trials ({networks} networks), {full.steps} steps: {full_s:.1f} s")
    print(f"  plain loop for the same, extrapolated from the subset: {per_network_plain * networks / 3600:.1f} h"
          f"   speedup {per_network_plain * networks / full_s:.0f}x")


if __name__ == "__main__":
    main()
