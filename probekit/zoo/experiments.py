"""``probekit experiment ...``: experiments that train their own models and write a store."""

from __future__ import annotations

import json
from collections.abc import Callable

import xarray as xr

from probekit import __version__
from probekit.store.provenance import base_attrs
from probekit.store.results import store_writer

TOY_SWEEP_NODE = "toy-sweep"
BRANCH_COUNT_NODE = "branch-count"
NAD_NODE = "nad"
MOE_NODE = "moe-synthetic"
HESSIAN_CLASSES_NODE = "hessian-classes"


def _write_experiment(args, node: str, attrs: dict, build: Callable[[], xr.Dataset], summary) -> str:
    """Create the store, build the node, write it with provenance; nothing is left behind on failure."""
    writer = store_writer(args.out, overwrite=args.overwrite)
    attrs = {**base_attrs(args.seed), **attrs}
    writer.create({**attrs, "plugins": json.dumps([node])})
    try:
        ds = build()
        ds.attrs.update({**attrs, "plugin": node, "plugin_version": __version__, "summary": json.dumps(summary(ds))})
        writer.write_node(node, ds)
    except BaseException:
        writer.discard()
        raise
    try:
        writer.finish({})
    finally:
        writer.release()
    return args.out


def toy_sweep(args) -> str:
    """Run the toy sweep the CLI asked for and write its store; return the store path."""
    from probekit.zoo.toy_sweep import SweepConfig, parse_branch_counts, run_sweep, summary

    config = SweepConfig(
        task=args.task, branches=parse_branch_counts(args.branches), trials=args.trials, steps=args.steps,
        lr=args.lr, init=args.init, seed=args.seed, dtype=args.dtype, record_dynamics=args.record_dynamics,
        dynamics_every=args.dynamics_every,
    )
    config.check()
    counts = config.branches
    attrs = {
        "model": json.dumps({"spec": f"toy networks sum_k LeakyReLU(w_k x + b_k), M = {counts[0]}..{counts[-1]}",
                             "sha256": "none (trained in this run)"}),
        "dataset": config.task,
        "n_samples": 4,
        "branch_strategy": "toy sweep",
        "n_branches": f"{min(counts)}..{max(counts)}",
    }
    return _write_experiment(args, TOY_SWEEP_NODE, attrs, lambda: run_sweep(config, progress=not args.quiet), summary)


def branch_count(args) -> str:
    """Train and probe branched-resnet18 for each M (Fig. 5 left) and write the store; return its path."""
    from probekit.zoo.branch_count import BranchCountConfig, run_branch_count, summary
    from probekit.run.data import load_data
    from probekit.errors import ProbekitError
    from probekit.zoo.toy_sweep import parse_branch_counts

    if not args.data_root:
        raise ProbekitError("branch-count needs --data-root (e.g. ../shared/data/cifar10)")
    config = BranchCountConfig(branches=parse_branch_counts(args.branches), epochs=args.epochs,
                               train_limit=args.train_limit or None, probe_data=args.probe_data, seed=args.seed,
                               checkpoint_dir=args.checkpoint_dir, head_init=args.head_init, scheme=args.scheme,
                               max_lr=args.max_lr)
    config.check()
    counts = config.branches
    attrs = {
        "model": json.dumps({"spec": f"branched-resnet18, M = {counts[0]}..{counts[-1]}",
                             "sha256": f"see {config.checkpoint_dir}/M<m>/model.pt"}),
        "dataset": config.probe_data,
        "n_samples": len(load_data(config.probe_data).dataset),
        "branch_strategy": "summed branches",
        "n_branches": f"{min(counts)}..{max(counts)}",
    }
    return _write_experiment(args, BRANCH_COUNT_NODE, attrs,
                             lambda: run_branch_count(config, args.data_root, progress=not args.quiet), summary)


def nad(args) -> str:
    """Learn NAD's class sub-architectures of a trained model (``probekit experiment nad``); return the store."""
    from probekit.models.branches import DiscoveryConfig, discover
    from probekit.models.loading import LoadOptions, load_model
    from probekit.errors import ProbekitError
    from probekit.run.data import load_data
    from probekit.zoo.nad import NadConfig, run_nad, summary, with_options
    from probekit.zoo.nad_checkpoints import MaskCheckpoints

    config = NadConfig(layers=args.layers, branch_gates=args.branch_gates, beta=args.beta, lr=args.lr,
                       epochs=args.epochs, batch_size=args.batch_size, train_per_class=args.train_per_class,
                       test_per_class=args.test_per_class, mosaics=args.mosaics, seed=args.seed,
                       permutations=args.permutations, resamples=args.resamples)
    config = with_options(config, args.option)
    config.check()
    loaded = load_model(args.model, LoadOptions(trust_pickle=args.trust_pickle, trust_code=args.trust_code))
    model = loaded.module.eval()
    try:
        branchset = discover(model, DiscoveryConfig(args.branches))
    except ProbekitError:
        branchset = None  # a plain model: gates need no branches
    train, test = load_data(args.data, args.seed), load_data(args.test_data, args.seed)
    attrs = {"model": json.dumps({"spec": loaded.spec, "sha256": loaded.sha256}), "dataset": args.data,
             "test_dataset": args.test_data, "n_samples": len(test),
             "branch_strategy": branchset.strategy if branchset else "none (plain model)",
             "n_branches": len(branchset) if branchset else 0}
    checkpoints = MaskCheckpoints.for_run(args.checkpoint_dir, config, loaded.sha256, args.data) \
        if args.checkpoint_dir else None
    return _write_experiment(args, NAD_NODE, attrs, lambda: run_nad(model, branchset, train, test, config,
                                                                    progress=not args.quiet, checkpoints=checkpoints),
                             summary)


def moe_synthetic(args) -> str:
    """Train and probe the mixtures of Chen et al. 2022, setting 1 (``probekit experiment moe-synthetic``)."""
    from probekit.zoo.moe_synthetic import MoeConfig, run_moe_synthetic, summary

    config = MoeConfig(seeds=args.seeds, first_seed=args.seed, steps=args.steps, train=args.train, test=args.test,
                       permutations=args.permutations, resamples=args.resamples)
    config.check()
    attrs = {"dataset": f"synthetic clusters (Chen et al. 2022, setting 1): {config.train} training, {config.test} "
                        "test samples per seed", "n_samples": config.test, "branch_strategy": "gated experts",
             "n_branches": config.experts, "model": json.dumps({"spec": "trained by the experiment",
                                                                "sha256": "none (trained in this run)"})}
    return _write_experiment(args, MOE_NODE, attrs, lambda: run_moe_synthetic(config, progress=not args.quiet),
                             summary)


def hessian_classes(args) -> str:
    """Exact Hessians of a branched one-hidden-layer network against the class count (Dong et al. 2025;
    ``probekit experiment hessian-classes``)."""
    from probekit.zoo.hessian_classes import HessianClassesConfig, parse_classes, run_hessian_classes, summary

    config = HessianClassesConfig(classes=parse_classes(args.classes), seeds=args.seeds, first_seed=args.seed,
                                  steps=args.steps, permutations=args.permutations)
    config.check()
    attrs = {"dataset": f"Gaussian inputs (d = {config.dim}, n = {config.samples}), random linear teacher labels",
             "n_samples": config.samples, "branch_strategy": "summed branches", "n_branches": config.branches,
             "model": json.dumps({"spec": "trained by the experiment", "sha256": "none (trained in this run)"})}
    return _write_experiment(args, HESSIAN_CLASSES_NODE, attrs,
                             lambda: run_hessian_classes(config, progress=not args.quiet), summary)
