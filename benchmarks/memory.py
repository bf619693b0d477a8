"""Peak memory does not grow with --limit: 1,000 against 10,000 samples of random:C,H,W.

Each run is a separate ``probekit run`` process; we read its peak resident set
size (ru_maxrss) and compare it with a plain torch forward loop over the same
number of samples in a process of its own. Prints peak MiB and the ratio
10,000 / 1,000 (flat memory: about 1.0).

    python benchmarks/memory.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = [
    ("digits-branched8", "random:1,8,8", "digits-sized"),
    ("torchvision:resnext50_32x4d", "random:3,32,32", "CIFAR-sized (ResNeXt-50, 32x32)"),
]
LIMITS = (1_000, 10_000)

BARE = """
import sys, torch
from probekit.run.data import load_data
from probekit.models.loading import load_model
model = load_model(sys.argv[1]).module
with torch.no_grad():
    for _, x, _ in load_data(sys.argv[2]).loader(64, int(sys.argv[3])):
        model(x)
"""


def peak_mib(command: list[str]) -> float:
    """Run ``command`` in a fresh child; return that child's own peak RSS in MiB."""
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with status {child.returncode}")
    return usage.ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for model, data, label in CASES:
            row = {}
            for limit in LIMITS:
                out = Path(tmp) / f"{label}-{limit}.zarr"
                probed = peak_mib([sys.executable, "-m", "probekit", "run", "--model", model, "--data", data,
                                   "--limit", str(limit), "--plugins", "activity,covariance", "--out", str(out),
                                   "--quiet"])
                bare = peak_mib([sys.executable, "-c", BARE, model, data, str(limit)])
                row[limit] = (probed, bare)
                print(f"{label:34s} {limit:6d} samples  peak RSS probekit {probed:7.1f} MiB  "
                      f"bare torch {bare:7.1f} MiB")
            (p1, b1), (p2, b2) = row[LIMITS[0]], row[LIMITS[1]]
            print(f"{label:34s} growth 10k/1k: probekit {p2 / p1:5.3f}  bare torch {b2 / b1:5.3f}")


if __name__ == "__main__":
    main()
