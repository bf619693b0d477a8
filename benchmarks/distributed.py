"""Throughput of ``probekit run`` with 1 process against 2 (``--nproc 2``, gloo) on the same data.

Both are whole CLI runs (process start, model and data loading, probing,
merging, the store), so the fixed costs count; the probing itself scales with
the shards. Samples per second and the ratio are printed.

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


def timed_run(args, nproc: int, folder: Path) -> float:
    out = folder / f"run-{nproc}.zarr"
    command = [sys.executable, "-m", "probekit", "run", "--model", args.model, "--data", args.data, "--plugins",
               args.plugins, "--out", str(out), "--batch-size", str(args.batch_size), "--quiet",
               "--nproc", str(nproc), *(["--limit", str(args.limit)] if args.limit else [])]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="digits-branched8")
    parser.add_argument("--data", default="digits:test")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--plugins", default="activity,covariance,specialization")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="probekit-bench-"))
    try:
        one, two = timed_run(args, 1, folder), timed_run(args, 2, folder)
    finally:
        shutil.rmtree(folder)
    print(f"{os.cpu_count()} CPUs; {args.model} on {args.data} (limit {args.limit}), plugins {args.plugins}")
    print(f"1 process  {one:7.1f} s")
    print(f"2 processes {two:7.1f} s  (gloo; OMP threads split between them)")
    print(f"speedup 2 vs 1: {one / two:.2f}x")


if __name__ == "__main__":
    main()
