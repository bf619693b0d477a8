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
from probekit.models.hf import is_model_folder, load_hf
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
    if isinstance(obj, nn.Module) and not (options.trust_pickle or options.trust_code):
        refuse_planted_hooks(obj, spec)
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
    elif is_model_folder(spec):  # a save_pretrained folder given without its scheme
        loaded = load_hf(spec, options)
    elif spec in names:
        loaded = _as_loaded(names[spec][0](spec, options), spec)
    elif Path(spec).is_dir():
        raise ProbekitError(f"{spec} is a folder without config.json: pass a model file, or a Hugging Face folder "
                            "saved with save_pretrained")
    elif Path(spec).suffix or "/" in spec:
        raise ProbekitError(f"model file not found: {spec}")
    else:
        raise ProbekitError(
            f"unknown model {spec!r}: not a file, a registered name ({', '.join(sorted(names)) or 'none'}) "
            f"or scheme:name ({', '.join(sorted(loaders))})"
        )
    check_module_tree(loaded.module, spec)
    if options.target_class is not None:
        _select_target(loaded.module, spec, options.target_class)
    loaded.module.eval()
    return loaded


MAX_DEPTH = 500  # module nesting; torch's own recursive walks (eval, named_modules) fail near 1,000
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
              "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
              "_load_state_dict_post_hooks")


def check_module_tree(module: nn.Module, spec: str) -> None:
    """Refuse a module tree torch cannot walk (a module that contains itself, nesting deeper than
    :data:`MAX_DEPTH`), walking it without recursion."""
    stack, on_path = [(module, 1, False)], set()
    while stack:
        node, depth, leaving = stack.pop()
        if leaving:
            on_path.discard(id(node))
            continue
        if id(node) in on_path:
            raise ProbekitError(f"{spec}: a module contains itself ({type(node).__name__}); it cannot be probed")
        if depth > MAX_DEPTH:
            raise ProbekitError(f"{spec}: modules nested over {MAX_DEPTH} deep; it cannot be probed")
        on_path.add(id(node))
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in node._modules.values() if child is not None)


def refuse_planted_hooks(module: nn.Module, spec: str) -> None:
    """A model file is data: hooks pickled into its modules (functions called on every pass) are refused."""
    for node in _modules_of(module):
        planted = [name for name in HOOK_DICTS if getattr(node, name, None)]
        if planted:
            raise ProbekitError(f"{spec} carries hooks pickled into a {type(node).__name__} ({planted[0]}): a "
                                "model file is data, and probekit does not run functions stored in it")


def _modules_of(module: nn.Module) -> list[nn.Module]:
    """Every module of an already checked tree, without recursion."""
    seen, stack = {}, [module]
    while stack:
        node = stack.pop()
        if id(node) not in seen:
            seen[id(node)] = node
            stack.extend(child for child in node._modules.values() if child is not None)
    return list(seen.values())


def _select_target(model: nn.Module, spec: str, name: str) -> None:
    """``--target-class``: the class a class-conditional generator transfers every input to."""
    if not hasattr(model, "select_target"):
        raise ProbekitError(f"--target-class needs a class-conditional generator (a select_target method); "
                            f"{spec} has none")
    model.select_target(name)
