"""A full ``probekit run`` of the classifier analyses against a bare forward pass over the same data.

probekit: ``execute`` with activity, covariance, specialization and intra-class,
end to end (data decoding, hooks, analyses, the zarr store). Bare: the plain
PyTorch way, the same data loader (same batch size and workers) into
``model(x)`` under ``no_grad``. They alternate, best of ``--repeats``; the
ratio probekit / bare is the issue's target (<= 1.2).

    python benchmarks/classifier_run.py [--model cifar10-branched16] \
        [--data cifar10:../shared/data/cifar10] [--batch-size 64] [--repeats 2]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from probekit.run.data import load_data
from probekit.models.loading import load_model
from probekit.run.runner import RunSpec, execute

PLUGINS = ["activity", "covariance", "specialization", "intra-class"]


def bare_pass(model_spec: str, data_spec: str, batch_size: int) -> float:
    start = time.perf_counter()
    model = load_model(model_spec).module.eval()
    with torch.no_grad():
        for _, x, _ in load_data(data_spec).loader(batch_size, None):
            model(x)
    return time.perf_counter() - start


def probed_pass(model_spec: str, data_spec: str, batch_size: int) -> float:
    folder = Path(tempfile.mkdtemp(prefix="probekit-bench-"))
    start = time.perf_counter()
    execute(RunSpec(model=model_spec, data=data_spec, plugins=PLUGINS, out=str(folder / "run.zarr"),
                    batch_size=batch_size, progress=False))
    elapsed = time.perf_counter() - start
    shutil.rmtree(folder)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="cifar10-branched16")
    parser.add_argument("--data", default="cifar10:../shared/data/cifar10")
    parser.add_argument("--batch-size", type=int, default=64, help="probekit run's default")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    n = len(load_data(args.data))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.model} on {args.data} "
          f"({n} samples, batch {args.batch_size}); plugins {','.join(PLUGINS)}")
    bare, probed = [], []
    for _ in range(args.repeats):
        bare.append(bare_pass(args.model, args.data, args.batch_size))
        probed.append(probed_pass(args.model, args.data, args.batch_size))
        print(f"  bare {bare[-1]:7.1f} s   probekit {probed[-1]:7.1f} s", flush=True)
    b, p = min(bare), min(probed)
    print(f"best of {args.repeats}: bare {b:.1f} s  probekit {p:.1f} s  ratio {p / b:.3f}")


if __name__ == "__main__":
    main()
