"""``--model SPEC`` to a module and its identity, through the registered loaders.

Specs are tried in this order: ``scheme:argument`` for a registered scheme
(``torchvision:resnext50_32x4d``, ``zoo:toy1``); an existing file (see
:mod:`probekit.models.model_files`); a name a plugin registered (the bundled
zoo's ``cifar10-branched16``). Every loader returns a :class:`LoadedModel`,
the module with what identifies it (the spec and the sha256 of its weights).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from probekit.errors import ProbekitError
from probekit.models.model_files import LoadedModel, LoadOptions, file_sha256, load_file

__all__ = ["LoadOptions", "LoadedModel", "load_model"]


def _as_loaded(result, spec: str) -> LoadedModel:
    """A loader's result as a :class:`LoadedModel` (a bare module gets an unknown identity)."""
    if isinstance(result, LoadedModel):
        return result
    if isinstance(result, nn.Module):
        return LoadedModel(result, spec, "unknown (the loader gave no identity)")
    raise ProbekitError(f"the loader of {spec!r} returned {type(result).__name__}, not a model")


def _from_file(spec: str, options: LoadOptions) -> LoadedModel:
    from probekit.plugins import manager

    obj = load_file(spec, options)
    if isinstance(obj, dict):
        built = manager().hook.probekit_model_from_checkpoint(checkpoint=obj)
        if built is None:
            raise ProbekitError(f"{spec} holds weights (a state_dict), not a model: add --arch module:callable")
        obj = built
    return LoadedModel(obj, spec, file_sha256(options.weights or spec))


def load_model(spec: str, options: LoadOptions | None = None) -> LoadedModel:
    """Resolve ``--model spec`` (as on the command line) to an eval-mode module on the CPU, with its identity."""
    from probekit.plugins import model_loaders, model_names

    options = options or LoadOptions()
    loaders, names = model_loaders(), model_names()
    scheme, _, argument = spec.partition(":")
    if options.weights and scheme != "torchvision" and not options.arch:
        raise ProbekitError("--weights goes with torchvision:<name>; for a file use --arch module:callable")
    if scheme in loaders and argument:
        loaded = _as_loaded(loaders[scheme][0](argument, options), spec)
    elif Path(spec).is_file():
        loaded = _from_file(spec, options)
    elif spec in names:
        loaded = _as_loaded(names[spec][0](spec, options), spec)
    elif Path(spec).suffix or "/" in spec:
        raise ProbekitError(f"model file not found: {spec}")
    else:
        raise ProbekitError(
            f"unknown model {spec!r}: not a file, a registered name ({', '.join(sorted(names)) or 'none'}) "
            f"or scheme:name ({', '.join(sorted(loaders))})"
        )
    if options.target_class is not None:
        _select_target(loaded.module, spec, options.target_class)
    loaded.module.eval()
    return loaded


def _select_target(model: nn.Module, spec: str, name: str) -> None:
    """``--target-class``: the class a class-conditional generator transfers every input to."""
    if not hasattr(model, "select_target"):
        raise ProbekitError(f"--target-class needs a class-conditional generator (a select_target method); "
                            f"{spec} has none")
    model.select_target(name)
