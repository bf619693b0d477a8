"""One streaming pass of a model over data, feeding every analysis, into a store."""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm  # (renders as a widget in a notebook)

from probekit.run import checkpoint as run_checkpoint
from probekit.run import distributed
from probekit.run.allocator import reused_memory
from probekit.run.analysis import Batch, RunContext
from probekit.run.coords import sample_coords
from probekit.run.memory_fit import fitted_batch_size
from probekit.run.merging import merge_value
from probekit.run import inputs
from probekit.run.inputs import Inputs
from probekit.run.options import options_json, parse_options
from probekit.run.taps import resolve as resolve_tap
from probekit.run.validation import check_instance
from probekit.models.branches import BranchSet, DiscoveryConfig, discover
from probekit.run.capture import capture
from probekit.run.data import ProbeData, batches, load_data
from probekit.run.data_choice import (DEFAULT_LIMIT, DEFAULT_SAMPLE, HUGE, check_channels, choose_targets,
                                      default_data_spec, fitted_image_folder, with_predicted_classes)
from probekit.errors import ProbekitError
from probekit.models.graph_models import FIXED_BATCH_ATTR, is_torchscript, torchscript_to_tapped
from probekit.models.initial_state import initialised_copy, never_trained
from probekit.models.loading import LoadedModel, LoadOptions, load_model
from probekit.models.losses import LOSS_ATTR
from probekit.plugins import manager, plugin_version
from probekit.run.registry import analyses, checked_analyses
from probekit.store.provenance import base_attrs
from probekit.store.results import StoreWriter, check_node_name, store_writer


CHECKPOINT_EVERY = 100


@dataclass
class RunSpec:
    """Everything ``probekit run`` was asked to do."""

    model: str
    data: str | None  # None: the default (see probekit.run.data_choice)
    plugins: list[str]
    out: str
    options: dict[str, dict[str, str]] = field(default_factory=dict)
    load: LoadOptions = LoadOptions()
    branches: str | None = None
    limit: int | None = None
    batch_size: int = 64
    device: str = "cpu"
    seed: int = 0
    overwrite: bool = False
    progress: bool = True
    resume: bool = False
    checkpoint_every: int = CHECKPOINT_EVERY  # batches; 0: no checkpoints
    shuffle: bool = False  # probe the samples in a random order drawn from the seed
    state: str = "trained"  # "init": probe a fresh default initialisation of the architecture under the seed
    command: str | None = None  # what made the run, for provenance (default: the command line)


@dataclass
class Run:
    """A run in progress: what the ``probekit_run_start`` hook receives."""

    spec: RunSpec
    model: LoadedModel
    data: ProbeData
    branchset: BranchSet
    n_samples: int
    analyses: dict = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    nonfinite: list[int] = field(default_factory=list)  # positions of samples with NaN/Inf outputs or responses
    module: torch.nn.Module | None = None  # what is probed (a TorchScript model converted to a tapped graph)
    device: torch.device | None = None
    context: RunContext | None = None
    targets: np.ndarray | None = None  # [n_samples] every probed sample's target (this shard's rows), for coords
    notes: list[str] = field(default_factory=list)  # what the run chose for the user (data, targets, methods)
    predicted_targets: bool = False  # targets are the model's own predicted classes
    response_sizes: dict[str, int] = field(default_factory=dict)  # layer name -> D, values per branch response


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ProbekitError(f"--device {name}: CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ProbekitError(f"--device {name!r} is not a device: {exc}") from exc


def _analysis_classes(spec: RunSpec) -> dict:
    registered, invalid = checked_analyses()
    broken = [p for p in spec.plugins if p in invalid]
    if broken:
        raise ProbekitError(f"{invalid[broken[0]]}; fix the plugin before running {broken[0]!r}")
    unknown = [p for p in spec.plugins if p not in registered]
    if unknown:
        raise ProbekitError(f"unknown plugin {unknown[0]!r}; available: {', '.join(sorted(registered)) or 'none'}")
    for name in spec.options:
        if name not in spec.plugins:
            raise ProbekitError(f"--option {name}.*: {name!r} is not among --plugins {','.join(spec.plugins)}")
    return {name: registered[name][0] for name in spec.plugins}


def response_sizes(module, branchset: BranchSet, x: Inputs) -> dict[str, int]:
    """``{layer name: D}``: how many values one branch response of each layer holds, from one forward of ``x``
    (one sample), so analyses can size their memory before the pass."""
    with torch.no_grad(), capture(module, branchset) as recorder:
        _forward(module, x)
        return {layer: int(r.shape[2]) for layer, r in recorder.take(inputs.count_inputs(x)).items()}


def _forward(model, x: Inputs) -> torch.Tensor:
    """Run the model (a dict of inputs as keyword arguments), padding to its fixed batch size when it has one."""
    fixed = getattr(model, FIXED_BATCH_ATTR, None)
    n = inputs.count_inputs(x)
    if fixed is not None and n != fixed:
        if n > fixed:
            raise ProbekitError(f"this model takes batches of exactly {fixed}: pass --batch-size {fixed}")
        x = inputs.pad_to(x, fixed)
    return inputs.call_model(model, x)[:n]


def _choose_data(spec: RunSpec, model, given: ProbeData | None = None) -> tuple[ProbeData, list[str]]:
    """The data to probe (``given``, ``--data``, else the default for the model), shuffled with ``--shuffle``, and
    the notes that say so; a warning for a huge implicit sample count."""
    if given is not None:
        data = given.shuffled(spec.seed) if spec.shuffle else given
        return data, [f"data: {data.name}"]
    if spec.data is None:
        data_spec, why = default_data_spec(model)
        notes = [f"data: {data_spec}, {why}"]
    else:
        data_spec, notes = spec.data, [f"data: {spec.data}"]
    data_spec, resized = fitted_image_folder(data_spec, model)
    if resized:
        notes[0] += f", {resized}"
    data = load_data(data_spec, spec.seed, model)
    if data.note:
        notes[0] += f", {data.note}"
    if spec.shuffle:
        data = data.shuffled(spec.seed)
        notes[0] += f", shuffled with seed {spec.seed}"
    if spec.limit is None and len(data) > HUGE and data_spec.startswith("random:"):
        warnings.warn(f"{data_spec} without --limit means {len(data):,} samples; pass --limit N for fewer",
                      stacklevel=2)
    return data, notes


def _check_needs(classes: dict, run: Run) -> None:
    """What the analyses need from the data, checked once they exist (so what the model lacks comes first) and
    before any costly work (the Hessian's memory and time budgets are checked on the first batch)."""
    for name, cls in classes.items():
        if cls.needs_targets and not run.data.has_targets and getattr(run.module, LOSS_ATTR, None) != "lm":
            raise ProbekitError(f"{name} needs targets, and {run.data.name} has none while the model's outputs "
                                "are not class scores; pass --data with labels")
        if cls.needs_classes and not run.data.classes:
            raise ProbekitError(f"{name} needs data with classes; {run.data.name} has none (pass --data with "
                                "class labels, e.g. cifar10-sample or imagefolder:PATH)")


def _first_forward(model, x: Inputs, data: ProbeData, spec: RunSpec) -> torch.Tensor:
    """Try the first batch, turning a shape error into one clear line; the outputs."""
    try:
        with torch.no_grad():
            return _forward(model, x)
    except ProbekitError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ProbekitError(
            f"data {data.name} (samples of shape {inputs.sample_shape(x)}) does not fit model {spec.model}: {first}"
        ) from exc


def provenance(run: Run, spec: RunSpec) -> dict:
    """Run-level attrs stored on the root and every node (see docs/schema.md)."""
    return {
        **base_attrs(spec.seed, spec.command),
        "model": json.dumps({"spec": spec.model, "sha256": run.model.sha256}),
        "dataset": run.data.name,
        "n_samples": run.n_samples,
        "branch_strategy": run.branchset.strategy,
        "n_branches": len(run.branchset),
        "targets": "model predictions (argmax of the output)" if run.predicted_targets else
                   "data labels" if run.data.has_targets else "none",
    }


def execute(spec: RunSpec, model: LoadedModel | None = None, data: ProbeData | None = None,
            notes: list[str] | None = None) -> Run:
    """Do the run; return it with any per-analysis errors (the store is written either way).

    ``model`` and ``data``, when given, are what ``spec.model`` and ``spec.data`` only label (a model and data
    in memory, :func:`probekit.probe`); ``notes`` go into the run's note. Launched by torchrun with several
    processes, each probes its shard and rank 0 writes the store (:mod:`probekit.run.distributed`).
    """
    ranks = distributed.from_env(spec.device)
    try:
        return _execute(spec, ranks, model, data, notes or [])
    finally:
        if ranks is not None:
            distributed.finish()


def _check_mergeable(classes: dict, ranks: distributed.Ranks | None, resume: bool = False) -> None:
    """Several processes and ``--resume`` both rebuild an analysis's state by merging: refuse analyses that do
    not declare how (``merge_rules``), which would silently lose what they saw."""
    undeclared = [name for name, cls in classes.items() if cls.merge_rules is None]
    if ranks is not None and undeclared:
        raise ProbekitError(f"analysis {undeclared[0]!r} does not declare how its state merges (merge_rules), so "
                            "it cannot run on several processes; run it without --nproc")
    if resume and undeclared:
        raise ProbekitError(f"analysis {undeclared[0]!r} does not declare how its state merges (merge_rules), so "
                            "its checkpoint cannot be restored; start the run again with --overwrite instead of "
                            "--resume")


def check_launch(spec: RunSpec) -> None:
    """What ``--nproc`` can check before launching processes: plugins, options, mergeability, the store."""
    from probekit.store.location import exists

    classes = _analysis_classes(spec)
    _check_mergeable(classes, distributed.Ranks(0, 2, 0))
    for name, cls in classes.items():
        parse_options(cls, spec.options.get(name, {}))
    if exists(spec.out) and not spec.overwrite:
        raise ProbekitError(f"output store {spec.out} already exists; pass --overwrite to replace it")


def _open_staging(writer: StoreWriter | None, attrs: dict, ranks: distributed.Ranks | None):
    """Rank 0 (or a single process) creates the store; every rank gets its staging-folder function."""
    if ranks is None:
        writer.create(attrs)
        return writer.staging
    failure = tmp = None
    if ranks.is_main:
        try:
            writer.create(attrs)
            tmp = str(writer.tmp)
        except ProbekitError as exc:
            failure = str(exc)
    failure, tmp = distributed.broadcast((failure, tmp))
    if failure:
        raise ProbekitError(failure)
    return lambda name: Path(tmp) / check_node_name(name)


def _create_analyses(classes: dict, context: RunContext, options: dict, ranks: distributed.Ranks | None) -> dict:
    """The analyses, each checked (:func:`check_instance`); rank 0 first, so it creates the shared per-sample
    arrays the other ranks open."""

    def make() -> dict:
        made = {}
        for name, cls in classes.items():
            made[name] = cls(context, options[name])
            check_instance(made[name])
        return made

    if ranks is None:
        return make()
    made = make() if ranks.is_main else None
    distributed.barrier()
    return made if ranks.is_main else make()


def _merge_ranks(run: Run, shard: range, ranks: distributed.Ranks) -> None:
    """Gather every rank's streaming state and errors on rank 0 and merge them there, in rank order."""
    states = {name: analysis.state() for name, analysis in run.analyses.items()}
    gathered = distributed.gather((shard, states, run.errors, run.nonfinite, run.targets), ranks)
    if not ranks.is_main:
        return
    for rows, other, errors, nonfinite, targets in gathered[1:]:
        run.errors.update(errors)
        run.nonfinite += nonfinite
        run.targets = merge_value("rows", run.targets, targets, rows, None)
        for name in list(run.analyses):
            if name in run.errors:
                del run.analyses[name]
            else:
                run.analyses[name].merge(other[name], rows)


def _execute(spec: RunSpec, ranks: distributed.Ranks | None, given_model: LoadedModel | None,
             given_data: ProbeData | None, extra_notes: list[str]) -> Run:
    classes = _analysis_classes(spec)
    _check_mergeable(classes, ranks, spec.resume)
    options = {name: parse_options(cls, spec.options.get(name, {})) for name, cls in classes.items()}
    main = ranks is None or ranks.is_main
    if spec.resume and ranks is not None:
        raise ProbekitError("--resume does not combine with --nproc; resume the run in one process")
    writer = store_writer(spec.out, overwrite=spec.overwrite, resume=spec.resume) if main else None
    if spec.batch_size <= 0 or (spec.limit is not None and spec.limit <= 0) or spec.checkpoint_every < 0:
        raise ProbekitError("--batch-size and --limit must be positive, --checkpoint-every at least 0")
    device = resolve_device(distributed.device_for(spec.device, ranks))
    torch.manual_seed(spec.seed)
    loaded = at_state(given_model or load_model(spec.model, spec.load), spec.state, spec.seed)
    data, notes = _choose_data(spec, loaded.module, given_data)
    if spec.data is None and spec.limit is None and data.name.startswith(f"{DEFAULT_SAMPLE}:"):
        spec = replace(spec, limit=DEFAULT_LIMIT)  # a first look that finishes in minutes; --limit N for more
        notes[0] += f", its first {DEFAULT_LIMIT} images (--limit N for more)"
    n_samples = data.count(spec.limit)
    shard = distributed.shard_of(n_samples, ranks) if ranks is not None else None
    first_batch = next(batches(data.loader(spec.batch_size, spec.limit)))
    module = loaded.module.to(device)
    first_inputs = inputs.to_device(first_batch[1], device)
    check_channels(module, first_batch[1], data)
    outputs = _first_forward(module, first_inputs, data, spec)
    # the bundled sample means the same whether it was chosen for the user or named: images whose labels only
    # count when they are the model's classes
    targets = choose_targets(data, outputs, chosen_for_user=spec.data is None or data.name.startswith(DEFAULT_SAMPLE))
    if targets.source == "predictions":
        data = with_predicted_classes(data, module, outputs)
    notes += [targets.note, *extra_notes]
    if is_torchscript(module):
        module = torchscript_to_tapped(module, first_inputs)
    branchset = discover(module, DiscoveryConfig(spec.branches))
    notes += [branchset.note] if branchset.note else []
    sizes = response_sizes(module, branchset, inputs.take_inputs(first_inputs, slice(0, 1)))
    batch_size, fitted = fitted_batch_size(spec.batch_size, sum(
        len(layer.branches) * sizes[layer.name] for layer in branchset.layers))
    if fitted:
        spec = replace(spec, batch_size=batch_size)
        notes.append(fitted)
        warnings.warn(fitted, stacklevel=2)
    run = Run(spec, loaded, data, branchset, n_samples, module=module, device=device, notes=notes,
              predicted_targets=targets.source == "predictions", response_sizes=sizes)
    attrs = provenance(run, spec)
    settings = run_checkpoint.fingerprint({**asdict(replace(spec, overwrite=False, progress=True, resume=False,
                                                            checkpoint_every=0)),
                                           "sha256": loaded.sha256, "n_samples": n_samples})
    try:
        _probe_and_write(run, writer, ranks, classes, options, attrs, settings, shard)
    finally:
        if writer is not None:
            writer.release()  # idempotent: the store's lock never outlives the run
    if ranks is not None:
        distributed.barrier()  # the other ranks return once the store is complete
    if main:
        from probekit.store.results import open_results

        manager().hook.probekit_run_finish(run=run, tree=open_results(spec.out))
    return run


def at_state(loaded: LoadedModel, state: str, seed: int) -> LoadedModel:
    """``loaded`` itself (``trained``), or a copy with PyTorch's default initialisation of every layer under
    ``seed`` (``init``): BatchNorm statistics reset to 0 and 1, and none of a recipe's own choices (e.g. zeroed
    heads). Its sha256 starts with ``none`` so the analyses label it ``random-init``."""
    if state == "trained":
        return loaded
    if state != "init":
        raise ProbekitError(f"--state must be trained or init, not {state!r}")
    return LoadedModel(initialised_copy(loaded.module, seed), loaded.spec,
                       f"none (default init under seed {seed} of the architecture of {loaded.sha256})")


def _probe_and_write(run: Run, writer: StoreWriter | None, ranks: distributed.Ranks | None, classes: dict,
                     options: dict, attrs: dict, settings: str, shard: range | None) -> None:
    """Open (or reopen) the store, stream every batch through the analyses, merge ranks, write the nodes.

    A failure before the end removes the unfinished store unless a checkpoint can resume it; a failure while
    writing the nodes (a full disk) frees this run's staging and keeps what sits at the store's path."""
    spec, main = run.spec, ranks is None or ranks.is_main
    saved = None
    untrained = never_trained(run.module)
    if untrained and not run.model.sha256.startswith("none"):
        run.notes.append("the model looks untrained (every BatchNorm holds its initial statistics): its results are "
                         "labelled random-init")
    try:  # from the store's creation on, so a SIGTERM at any point leaves no half-made store behind
        if spec.resume:
            writer.reopen()
            saved = run_checkpoint.load(writer.tmp, settings)
            staging = writer.staging
        else:
            staging = _open_staging(writer, {**attrs, "plugins": json.dumps(spec.plugins)}, ranks)
        start = saved["position"] if saved else 0
        context = RunContext(run.branchset, run.data, run.n_samples, run.device, spec.seed, staging=staging,
                             model=run.module, shard=shard,
                             align=distributed.SHARD_ALIGN if ranks is not None else None, resume_from=start,
                             batch_size=spec.batch_size, response_sizes=run.response_sizes,
                             random_init=run.model.sha256.startswith("none") or untrained)
        run.context = context
        run.analyses = _create_analyses(classes, context, options, ranks)  # what the model lacks, first
        _check_needs(classes, run)  # then what the data lacks, before any costly work (memory, time)
        if saved:
            _restore(run, saved)
        if main:
            manager().hook.probekit_run_start(run=run)
        checkpoints = (lambda position: run_checkpoint.save(
            writer.tmp, settings, position, {n: a.state() for n, a in run.analyses.items()}, run.errors,
            run.nonfinite, context.arrays, run.targets)) if ranks is None and spec.checkpoint_every else None
        rows = range(start, run.n_samples) if ranks is None else shard
        _stream(run.module, run.data.loader(spec.batch_size, spec.limit, rows), run, run.device,
                spec if main else replace(spec, progress=False), checkpoints)
        if ranks is not None:
            _merge_ranks(run, shard, ranks)
    except BaseException:
        if writer is not None and not (writer.tmp / run_checkpoint.CHECKPOINT).exists():
            writer.discard()  # nothing to resume from: leave no half-made store behind
        raise
    if not main:
        return
    try:
        _finalize(run, writer, attrs, classes, options)
        run.notes += [note for a in run.analyses.values() if (note := a.note())]
        writer.finish(run.errors, {**nonfinite_attrs(run), "note": "; ".join(run.notes)})
    except OSError:
        writer.drop_staging()
        raise


def _restore(run: Run, saved: dict) -> None:
    """Put an interrupted run's checkpointed state into its freshly made analyses."""
    run.errors.update(saved["errors"])
    run.nonfinite = list(saved["nonfinite"])
    run.targets = saved.get("targets")
    done = range(0, saved["position"])
    for name in list(run.analyses):
        if name in run.errors:
            del run.analyses[name]
        else:
            run.analyses[name].merge(saved["states"][name], done)


def _stream(module, loader, run: Run, device: torch.device, spec: RunSpec, checkpoint=None) -> None:
    """Every batch through the model and the analyses; ``checkpoint(position)`` every
    ``spec.checkpoint_every`` batches."""
    needs_grad = any(a.needs_grad for a in run.analyses.values())
    ungated = any(a.needs_ungated for a in run.analyses.values())
    with capture(module, run.branchset, tap_plan(run), ungated) as recorder, torch.set_grad_enabled(needs_grad), \
            reused_memory():
        progress = tqdm(batches(loader), total=len(loader), desc="probing", unit="batch",
                        disable=not spec.progress or None, file=sys.stderr)
        for count, (index, x, target) in enumerate(progress, 1):
            x = inputs.to_device(x, device)
            outputs = _forward(module, x)
            if run.predicted_targets:
                target = outputs.detach().argmax(1)
            batch = Batch(index, x, target.to(device) if run.data.has_targets else None, outputs,
                          recorder.take(n := inputs.count_inputs(x)), recorder.take_taps(n), recorder.take_gates(n),
                          recorder.take_token_gates(n), recorder.take_ungated(n))
            run.nonfinite += nonfinite_positions(batch)
            _record_targets(run, batch)
            for name, analysis in list(run.analyses.items()):
                try:
                    analysis.update(batch)
                except Exception as exc:
                    run.errors[name] = f"{type(exc).__name__}: {exc}"
                    del run.analyses[name]
            if checkpoint is not None and count % spec.checkpoint_every == 0:
                checkpoint(int(index[-1]) + 1)


def tap_plan(run: Run) -> dict[str, dict[str, tuple[str, str]]]:
    """Every running analysis's taps resolved on the probed module: ``{tap: {key: (module path, kind)}}``. Two
    analyses may share a tap name only for the same tap."""
    plan, declared = {}, {}
    for name, analysis in run.analyses.items():
        for tap_name, tap in analysis.taps.items():
            if declared.setdefault(tap_name, tap) != tap:
                raise ProbekitError(f"analyses declare different taps named {tap_name!r}; rename one")
            found = resolve_tap(tap, run.module, run.branchset, f"analysis {name!r}")
            plan[tap_name] = {key: (path, tap.kind) for key, path in found.items()}
    return plan


def _record_targets(run: Run, batch: Batch) -> None:
    """Keep every sample's target (for the ``target`` coordinate the runner adds to per-sample variables)."""
    if batch.targets is None:
        return
    values = batch.targets.detach().cpu().numpy()
    if run.targets is None:
        run.targets = np.zeros((run.n_samples, *values.shape[1:]), dtype=values.dtype)
    run.targets[batch.index.numpy()] = values


def with_sample_coords(ds, run: Run, name: str):
    """``ds`` with ``sample``, ``sample_id`` and ``target`` coordinates when it (or a per-sample array the analysis
    streamed) has a ``sample`` dim and the analysis did not set them itself."""
    streamed = any(getattr(a, "analysis", None) == name and "sample" in a.dims for a in run.context.arrays)
    if "sample" in ds.coords or not (streamed or "sample" in ds.dims):
        return ds
    return ds.assign_coords(sample_coords(run.context, run.targets))


def nonfinite_positions(batch: Batch) -> list[int]:
    """Positions of the batch's samples whose output or any branch response holds NaN or Inf."""
    bad = ~torch.isfinite(batch.outputs.detach().flatten(1)).all(1)
    for responses in batch.responses.values():
        bad |= ~torch.isfinite(responses.detach().flatten(1)).all(1)
    return batch.index[bad.cpu()].tolist()


def nonfinite_attrs(run: Run) -> dict:
    """Root attrs that flag samples with NaN/Inf: their count and the first 20 ids."""
    ids = [str(run.data.sample_ids[i]) for i in sorted(run.nonfinite)[:20]]
    return {"nonfinite_samples": len(run.nonfinite), "nonfinite_sample_ids": json.dumps(ids)}


def _finalize(run: Run, writer: StoreWriter, attrs: dict, classes: dict, options: dict) -> None:
    plugin_of = {name: plugin for name, (_, plugin) in analyses().items()}
    for name, analysis in run.analyses.items():
        try:
            ds = with_sample_coords(analysis.finalize(), run, name)
            ds.attrs.update({
                **attrs,
                "plugin": name,
                "plugin_version": plugin_version(plugin_of[name]),
                "options": options_json(options[name]),
                "summary": json.dumps(analysis.summary(ds)),
            })
            writer.write_node(name, ds)
        except Exception as exc:
            run.errors[name] = f"{type(exc).__name__}: {exc}"

