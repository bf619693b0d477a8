"""``probekit experiment ...``: experiments that train their own models and write a store."""

from __future__ import annotations

import json

from . import __version__
from .provenance import base_attrs
from .store import StoreWriter
from .toy_sweep import SweepConfig, parse_branch_counts, run_sweep, summary

TOY_SWEEP_NODE = "toy-sweep"


def toy_sweep(args) -> str:
    """Run the toy sweep the CLI asked for and write its store; return the store path."""
    config = SweepConfig(
        task=args.task, branches=parse_branch_counts(args.branches), trials=args.trials, steps=args.steps,
        lr=args.lr, init=args.init, seed=args.seed, dtype=args.dtype, record_dynamics=args.record_dynamics,
        dynamics_every=args.dynamics_every,
    )
    config.check()
    writer = StoreWriter(args.out, overwrite=args.overwrite)
    counts = config.branches
    attrs = {
        **base_attrs(config.seed),
        "model": json.dumps({"spec": f"toy networks sum_k LeakyReLU(w_k x + b_k), M = {counts[0]}..{counts[-1]}",
                             "sha256": "none (trained in this run)"}),
        "dataset": config.task,
        "n_samples": 4,
        "branch_strategy": "toy sweep",
        "n_branches": f"{min(counts)}..{max(counts)}",
    }
    writer.create({**attrs, "plugins": json.dumps([TOY_SWEEP_NODE])})
    try:
        ds = run_sweep(config, progress=not args.quiet)
        ds.attrs.update({**attrs, "plugin": TOY_SWEEP_NODE, "plugin_version": __version__,
                         "summary": json.dumps(summary(ds))})
        writer.write_node(TOY_SWEEP_NODE, ds)
    except BaseException:
        writer.discard()
        raise
    writer.finish({})
    return args.out
