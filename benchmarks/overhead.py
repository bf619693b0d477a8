"""Overhead of probing: an activity+covariance pass against a bare torch forward pass.

Both loops run in this process over the same pre-built batches, alternating,
best of several repeats. Prints the ratio probekit / bare (target: <= 1.15).

    python benchmarks/overhead.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from probekit.run.analysis import Batch, RunContext
from probekit.models.branches import DiscoveryConfig, discover
from probekit.run.capture import capture
from probekit.run.data import load_data
from probekit.run.registry import analyses
from probekit.zoo.registry import load_zoo_model


def batches(spec: str, n: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data = load_data(spec)
    return [(index, x) for index, x, _ in data.loader(batch_size, n)]


def bare_pass(model, items) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        for _, x in items:
            model(x)
    return time.perf_counter() - start


def probed_pass(model, items, spec: str, n: int) -> float:
    """What ``probekit run`` does per batch: hooks, response capture, analysis updates,
    per-sample norms streamed to a zarr staging folder."""
    start = time.perf_counter()
    branchset = discover(model, DiscoveryConfig())
    staging = Path(tempfile.mkdtemp(prefix="probekit-bench-"))
    context = RunContext(branchset, load_data(spec), n, torch.device("cpu"), 0, staging=lambda name: staging / name)
    registered = analyses()
    running = [registered[name][0](context, registered[name][0].Options()) for name in ("activity", "covariance")]
    with torch.no_grad(), capture(model, branchset) as recorder:
        for index, x in items:
            batch = Batch(index, x, None, model(x), recorder.take())
            for analysis in running:
                analysis.update(batch)
    for analysis in running:
        analysis.finalize()
    elapsed = time.perf_counter() - start
    shutil.rmtree(staging)
    return elapsed


def measure(name: str, model, spec: str, n: int, batch_size: int, repeats: int) -> None:
    model.eval()
    items = batches(spec, n, batch_size)
    bare_pass(model, items[:1]), probed_pass(model, items[:1], spec, batch_size)  # warm up
    bare, probed = [], []
    for _ in range(repeats):
        bare.append(bare_pass(model, items))
        probed.append(probed_pass(model, items, spec, n))
    b, p = min(bare), min(probed)
    print(f"{name:32s} {n:6d} samples  bare {b:8.3f} s  probekit {p:8.3f} s  ratio {p / b:5.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    measure("digits-branched8 (bs 256)", load_zoo_model("digits-branched8"), "random:1,8,8", 20_480, 256,
            args.repeats)
    torch.manual_seed(0)
    measure("resnext50_32x4d 224px (bs 8)", torchvision.models.resnext50_32x4d(), "random:3,224,224", 32, 8,
            max(2, args.repeats // 2))


if __name__ == "__main__":
    main()
