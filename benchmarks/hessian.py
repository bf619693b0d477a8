"""The ``hessian`` summed method against the naive double-backward loop, on the first layer of every branch
(default), or on ``--params GLOBS``: ``--params 'branches.*.conv1.weight,branches.*.layer1.0.conv1.weight'`` is the
first two conv layers of every branch, where the within-branch term R_k is not zero.

Naive: one ``torch.autograd.grad`` of one gradient element per row through
the whole model; its one-off setup (the forward pass and the first gradient with its graph) is timed apart, and the
per-row time is measured on ``--naive-rows`` evenly spaced rows, which fall in every branch, and extrapolated to all
rows (the output says so). Summed: :func:`probekit_plugins.hessian.exact.summed_hessian`
for all rows; ``--within auto`` (the plugin's default) skips each branch's
second-order term R_k when random HVP probes show it is identically zero (true
for the first layer of ReLU branches), ``--within full`` computes every R_k row
by row. The rows the naive loop computed are compared with the summed method's.
Peak RSS of the process is printed against the memory budget.

    python benchmarks/hessian.py [--model cifar10-branched16] [--batch-size 128] [--naive-rows 8] [--within full]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from probekit_plugins.hessian.exact import WITHIN, MemoryPlan, gib, naive_hessian, parse_bytes, summed_hessian
from probekit.models.branches import DiscoveryConfig, discover
from probekit.run.data import load_data
from probekit.models.loading import load_model
from probekit.models.losses import resolve_loss, summed_loss
from probekit_plugins.hessian.params import select_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="cifar10-branched16")
    parser.add_argument("--data", default="cifar10-sample")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--naive-rows", type=int, default=32)
    parser.add_argument("--max-memory", default="4GiB")
    parser.add_argument("--within", choices=WITHIN, default="auto")
    parser.add_argument("--params", help="parameter globs, comma-separated (default: the first layer of each branch)")
    args = parser.parse_args()
    model = load_model(args.model).module.eval()
    _, x, y = next(iter(load_data(args.data).loader(args.batch_size, args.batch_size)))
    branchset = discover(model, DiscoveryConfig())
    blocks = select_params(model, branchset, args.params)
    total = sum(b.size for b in blocks)
    loss_name = resolve_loss("auto", model, True, "hessian")

    def loss_of_outputs(outputs):
        return summed_loss(loss_name, outputs, y, "hessian")

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.model}, {len(branchset)} branches, "
          f"{total} parameters ({args.params or 'first layer'}), batch {len(x)}, loss {loss_name}")
    start = time.perf_counter()
    parts = summed_hessian(model, branchset.layers[0], blocks, x, loss_of_outputs,
                           MemoryPlan(parse_bytes(args.max_memory)), progress=True, within=args.within)
    summed_s = time.perf_counter() - start
    step = max(1, total // args.naive_rows)
    rows = range(0, total, step)
    start = time.perf_counter()
    naive_hessian(lambda m: loss_of_outputs(m(x)), model, blocks, range(0))  # the one-off setup alone
    setup_s = time.perf_counter() - start
    start = time.perf_counter()
    reference = naive_hessian(lambda m: loss_of_outputs(m(x)), model, blocks, rows)
    per_row = max(0.0, time.perf_counter() - start - setup_s) / len(rows)
    naive_s = setup_s + per_row * total
    covered = {b.branch for b in blocks for i in rows if b_start(blocks, b) <= i < b_start(blocks, b) + b.size}
    error = float((parts.hessian[rows.start:rows.stop:rows.step] - reference).norm() / reference.norm())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"summed method, within={args.within} (all {total} rows) {summed_s:9.1f} s; R_k found identically zero "
          f"for {len(parts.zero_within)} of {len(branchset)} branches")
    print(f"naive double-backward                  {naive_s:9.1f} s  (EXTRAPOLATED: setup {setup_s:.1f} s + "
          f"{per_row:.2f} s per row x {total} rows, timed on {len(rows)} rows in {len(covered)} branches)")
    print(f"speedup {naive_s / summed_s:.1f}x   relative error on the compared rows {error:.2e}")
    print(f"peak RSS {gib(peak)} (budget {args.max_memory})")


def b_start(blocks, block) -> int:
    """The first row of ``block`` in the selection."""
    start = 0
    for other in blocks:
        if other is block:
            return start
        start += other.size
    raise ValueError(block)


if __name__ == "__main__":
    main()
