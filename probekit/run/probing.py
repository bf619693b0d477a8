"""``probekit.probe``: the one entry point of a run, from Python; ``probekit run`` is a thin layer over it."""

from __future__ import annotations

import copy
import hashlib
import tempfile
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from probekit.errors import ProbekitError
from probekit.models.heads import swaps_modules
from probekit.models.loading import LoadedModel, LoadOptions, check_module_tree
from probekit.run.memory_data import as_probe_data
from probekit.run.runner import CHECKPOINT_EVERY, Run, RunSpec, execute
from probekit.run.threads import torch_threads


def module_sha256(module: nn.Module) -> str:
    """sha256 of a module's parameters and buffers (names, shapes, dtypes and values): its identity in
    provenance when it comes from memory rather than a file."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _in_memory(module: nn.Module) -> LoadedModel:
    """The user's module as a run's model; a copy when discovery would swap its attention modules for their
    per-head form (the user's object is left as it was)."""
    check_module_tree(module, "the model")
    label = f"in memory: {type(module).__module__}.{type(module).__qualname__}"
    probed = copy.deepcopy(module) if swaps_modules(module) else module
    return LoadedModel(probed, label, module_sha256(module))


@contextmanager
def _eval_mode(module: nn.Module | None):
    """The user's own module in eval mode for the run, its training mode restored after."""
    if module is None:
        yield
        return
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.train(training)


def _analyses(analyses: str | Sequence[str]) -> list[str]:
    names = [a.strip() for a in (analyses.split(",") if isinstance(analyses, str) else analyses) if a.strip()]
    if not names:
        raise ProbekitError("no analysis named: pass e.g. ['activity', 'covariance']")
    return names


def _options(options: dict | None) -> dict[str, dict[str, str]]:
    """``{"hessian": {"max_time": 60}}`` or ``{"hessian.max_time": 60}`` as the run's ``{name: {key: text}}``."""
    out: dict[str, dict[str, str]] = {}
    for key, value in (options or {}).items():
        if isinstance(value, dict):
            for inner, text in value.items():
                out.setdefault(key, {})[str(inner)] = _text(text)
            continue
        name, dot, inner = str(key).partition(".")
        if not (dot and name and inner):
            raise ProbekitError(f"options must look like {{'NAME': {{'KEY': VALUE}}}} or {{'NAME.KEY': VALUE}}, "
                                f"not {key!r}")
        out.setdefault(name, {})[inner] = _text(value)
    return out


def _text(value) -> str:
    """An option value as the command line would give it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def run_probe(model, data, analyses, *, out: str, options=None, branches=None, limit=None, batch_size=64,
              device="cpu", seed=0, shuffle=False, progress=True, threads=None, targets=None, load=None,
              overwrite=False, resume=False, checkpoint_every=CHECKPOINT_EVERY, state="trained",
              command=None) -> tuple[Run, str]:
    """Do the run :func:`probe` describes, writing the store ``out``; return the run and ``out``."""
    given_model = _in_memory(model) if isinstance(model, nn.Module) else None
    if given_model is None and not isinstance(model, str):
        raise ProbekitError(f"model must be an nn.Module or a model spec string, not {type(model).__name__}")
    given_data = None if data is None or isinstance(data, str) else as_probe_data(data, targets)
    if targets is not None and given_data is None:
        raise ProbekitError("targets= goes with a tensor of inputs")
    spec = RunSpec(model=model if given_model is None else given_model.spec,
                   data=data if given_data is None else given_data.name, plugins=_analyses(analyses),
                   out=out, options=_options(options), load=load or LoadOptions(), branches=branches,
                   limit=limit, batch_size=batch_size, device=device, seed=seed, overwrite=overwrite,
                   progress=progress, resume=resume, checkpoint_every=checkpoint_every,
                   shuffle=shuffle, state=state, command=command)
    with torch_threads(threads) as threads_note, _eval_mode(given_model.module if given_model else None):
        run = execute(spec, given_model, given_data, notes=[threads_note])
    return run, spec.out


def probe(model, data=None, analyses=("activity",), *, options=None, branches=None, out=None, limit=None,
          batch_size=64, device="cpu", seed=0, shuffle=False, progress=True, threads=None, targets=None,
          **run_options):
    """Probe ``model`` over ``data`` with ``analyses`` and return the results as an ``xarray.DataTree``.

    ``model``: an ``nn.Module`` in memory (used as it is; it is put in eval mode for the run and its mode
    restored after), or any ``--model`` spec (``"digits-branched8"``, ``"hf:DIR"``, a file). ``data``: a spec
    string (``None``: the model's default), a torch ``Dataset`` (items ``x``, ``(x, y)`` or dicts), a
    ``DataLoader``, a tensor (with ``targets=``) or an iterable of batches; dict inputs (``input_ids``, ...) go to
    the model as keyword arguments. ``options``: ``{"hessian": {"max_time": 60}}``. ``out``: ``None`` keeps the
    results in memory (same schema and provenance); a path writes the store ``probekit run`` writes.
    ``threads``: torch threads (default: the free cores). ``run_options``: ``overwrite``, ``resume``,
    ``checkpoint_every``, ``state`` and ``load`` (a :class:`probekit.LoadOptions`), as on the command line.

    An analysis that fails leaves the others' results and warns with its error; bad input raises
    :class:`probekit.ProbekitError` with the command line's one-line message.
    """
    import shutil

    from probekit.store.results import open_results

    unknown = set(run_options) - {"overwrite", "resume", "checkpoint_every", "state", "load"}
    if unknown:
        raise TypeError(f"probe() got an unexpected keyword argument {sorted(unknown)[0]!r}")
    call = dict(options=options, branches=branches, limit=limit, batch_size=batch_size, device=device, seed=seed,
                shuffle=shuffle, progress=progress, threads=threads, targets=targets, **run_options)
    command = f"probekit.probe({_label(model)}, {_label(data)}, {list(_analyses(analyses))})"
    if out is not None:
        run, store = run_probe(model, data, analyses, out=str(out), command=command, **call)
        _warn_errors(run)
        return open_results(store)
    scratch = Path(tempfile.mkdtemp(prefix="probekit-"))
    try:
        call["checkpoint_every"] = 0  # nothing to resume: the store lives only for this call
        run, store = run_probe(model, data, analyses, out=str(scratch / "results.zarr"), command=command, **call)
        _warn_errors(run)
        return _loaded(open_results(store))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _loaded(tree):
    """``tree`` with every variable read into memory (``DataTree.load`` leaves chunked zarr arrays lazy: they read
    as the fill value once the scratch store is gone)."""
    for node in tree.subtree:
        for variable in node.variables.values():
            variable.load()
    return tree


def _label(value) -> str:
    return repr(value) if isinstance(value, str) or value is None else type(value).__name__


def _warn_errors(run: Run) -> None:
    for name, message in run.errors.items():
        warnings.warn(f"analysis {name} failed: {message}", stacklevel=3)
