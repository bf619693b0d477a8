"""Report time and memory against store size: 1,000 and 10,000 samples.

Each report runs in a fresh process; we print its wall time and peak RSS,
next to the plain way of reading the same store (``xr.open_datatree(...).load()``,
which pulls every array, per-sample ones included, into memory). Reports use
reductions only, so their time and memory should not follow the sample count.

    python benchmarks/report.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = [
    ("digits-branched8", "random:1,8,8", "digits-branched8 (8 branches)"),
    ("torchvision:resnext50_32x4d", "random:3,32,32", "ResNeXt-50 (512 branches)"),
]
LIMITS = (1_000, 10_000)
REPORT = ("import sys; from probekit.report.html import write_report; "
          "write_report(sys.argv[1], sys.argv[2], overwrite=True)")
LOAD_ALL = "import sys, xarray as xr; xr.open_datatree(sys.argv[1], engine='zarr').load()"


def timed(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of ``command`` in a fresh child."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed")
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for model, data, label in CASES:
            for limit in LIMITS:
                store = Path(tmp) / f"{limit}.zarr"
                subprocess.run([sys.executable, "-m", "probekit", "run", "--model", model, "--data", data, "--limit",
                                str(limit), "--batch-size", "250", "--plugins", "activity,covariance", "--out",
                                str(store), "--quiet", "--overwrite"], check=True, stdout=subprocess.DEVNULL)
                report_s, report_mib = timed([sys.executable, "-c", REPORT, str(store), str(Path(tmp) / f"r{limit}")])
                _, load_mib = timed([sys.executable, "-c", LOAD_ALL, str(store)])
                print(f"{label:30s} {limit:6d} samples  report {report_s:5.1f} s, peak {report_mib:6.1f} MiB  |  "
                      f"load-everything peak {load_mib:6.1f} MiB")


if __name__ == "__main__":
    main()
