"""Throughput of ``probekit run`` with 1 process against 2 (``--nproc 2``, gloo) on the same data.

Both are whole CLI runs (process start, model and data loading, probing,
merging, the store), so the fixed costs count. Each is also timed on 64
samples, to split the fixed cost (starting processes, imports, rendezvous)
from the probing throughput (samples per second beyond those 64).

    python benchmarks/distributed.py [--model digits-branched8] [--data digits:test] [--limit 360] \
        [--plugins activity,covariance,specialization]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


SMALL = 64


def timed_run(args, nproc: int, folder: Path, limit: int | None) -> float:
    out = folder / f"run-{nproc}-{limit}.zarr"
    command = [sys.executable, "-m", "probekit", "run", "--model", args.model, "--data", args.data, "--plugins",
               args.plugins, "--out", str(out), "--batch-size", str(args.batch_size), "--quiet",
               "--nproc", str(nproc), *(["--limit", str(limit)] if limit else [])]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="digits-branched8")
    parser.add_argument("--data", default="random:1,8,8")
    parser.add_argument("--limit", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--plugins", default="activity,covariance")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="probekit-bench-"))
    try:
        times = {n: (timed_run(args, n, folder, args.limit), timed_run(args, n, folder, SMALL)) for n in (1, 2)}
    finally:
        shutil.rmtree(folder)
    print(f"{os.cpu_count()} CPUs; {args.model} on {args.data} (limit {args.limit}), plugins {args.plugins}")
    rates = {}
    for n, (whole, small) in times.items():
        rates[n] = (args.limit - SMALL) / max(whole - small, 1e-9)
        print(f"{n} process(es): {whole:6.1f} s in all, {small:5.1f} s fixed (a {SMALL}-sample run), "
              f"{rates[n]:9.0f} samples/s probing")
    print(f"2 vs 1 processes: whole run {times[1][0] / times[2][0]:.2f}x, probing throughput "
          f"{rates[2] / rates[1]:.2f}x (gloo; torchrun gives each process 1 OMP thread)")


if __name__ == "__main__":
    main()
