"""Model loading for ``--model`` (the loaders are a plugin of the core).

Accepted specs, tried in this order:
``scheme:argument`` for a registered scheme (``torchvision:resnext50_32x4d``,
``zoo:toy1``); an existing file (TorchScript, torch.export, whole-module pickle,
or a state_dict with ``--arch module:callable``); a bundled zoo name.
"""

from __future__ import annotations

import hashlib
import importlib
import struct
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import MAX_SHOWN, ProbekitError, escape
from .graph_models import load_exported
from .hookspecs import hookimpl
from .safe_pickle import load_module_pickle
from .zoo import ZOO, build_from_checkpoint, is_zoo_checkpoint, load_zoo_model


@dataclass(frozen=True)
class LoadOptions:
    """Flags that change how a model spec loads."""

    weights: str | None = None
    arch: str | None = None
    trust_pickle: bool = False
    trust_code: bool = False
    target_class: str | None = None


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model and what identifies it: the spec and the sha256 of its weights."""

    module: nn.Module
    spec: str
    sha256: str


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_file(path: str) -> None:
    if not Path(path).is_file():
        raise ProbekitError(f"model file not found: {path}")


def build_arch(arch: str) -> nn.Module:
    """Call ``module:callable`` to build an (untrained) architecture.

    The callable must live in an importable module outside the standard library (``os:system`` and
    ``builtins:exec`` are refused before anything is called) and must return an ``nn.Module``.
    """
    module_name, _, attr = arch.partition(":")
    if not module_name or not attr or not all(part.isidentifier() for part in [*module_name.split("."), attr]):
        raise ProbekitError(f"--arch must be module:callable (e.g. torchvision.models:resnet18), not {arch!r}")
    if module_name.split(".")[0] in sys.stdlib_module_names:
        raise ProbekitError(f"--arch {arch}: {module_name} is a standard-library module, not a model architecture")
    try:
        builder = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ProbekitError(f"--arch {arch}: {_first_line(exc)}") from exc
    if not callable(builder):
        raise ProbekitError(f"--arch {arch} is a {type(builder).__name__}, not a callable")
    try:
        model = builder()
    except Exception as exc:
        raise ProbekitError(f"--arch {arch} could not be called with no arguments: {_first_line(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise ProbekitError(f"--arch {arch} returned {type(model).__name__}, not an nn.Module")
    return model


def is_safetensors(path: str) -> bool:
    """Whether ``path`` looks like a safetensors file (a little-endian header length, then a JSON object)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (size,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 8 + size <= Path(path).stat().st_size


def read_state_dict(path: str) -> dict:
    """The tensors of a weights file: safetensors, or a ``torch.save``d state_dict (``weights_only``)."""
    if is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ProbekitError(f"{path} is not a readable safetensors file: {_first_line(exc)}") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ProbekitError(f"{path} is not a readable state_dict: {_first_line(exc)}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ProbekitError(f"{path} holds a {type(state).__name__}, not a state_dict")
    return state


def load_state_dict_into(model: nn.Module, path: str) -> nn.Module:
    """Load a weights file (a state_dict, or a checkpoint holding one) into ``model``."""
    _check_file(path)
    state = read_state_dict(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ProbekitError(f"weights in {path} do not fit the architecture: {_first_line(exc)}") from exc
    return model


def _first_line(exc: BaseException) -> str:
    """The first line of an error message, escaped (it may quote the file)."""
    text = str(exc).strip()
    return escape(text.splitlines()[0], MAX_SHOWN) if text else type(exc).__name__


def _archive_kind(path: str) -> str:
    """``torchscript``, ``export`` or ``pickle`` (from the zip's member names)."""
    if not zipfile.is_zipfile(path):
        return "pickle"
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any("serialized_exported_program" in n or n.endswith("archive_format") for n in names):
        return "export"
    if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
        return "torchscript"
    return "pickle"


PROGRAMS = {
    "torchscript": "a TorchScript archive: a program, which can write files and run code as it loads",
    "export": "a torch.export archive: a program, whose weights may be pickles that run code as it loads",
}


def load_file(path: str, options: LoadOptions) -> nn.Module:
    """Load a model file of any supported kind (programs only with ``trust_code``; see docs/security.md)."""
    kind = _archive_kind(path)
    if kind in PROGRAMS and not options.trust_code:
        raise ProbekitError(f"{path} is {PROGRAMS[kind]}. Only if you trust the file's author: pass --trust-code; "
                            "or ask for a state_dict or safetensors file and pass --arch module:callable")
    if kind == "export":
        return load_exported(path)
    if kind == "torchscript":
        try:
            with warnings.catch_warnings():  # torch.jit.load's deprecation notice is not the user's concern
                warnings.simplefilter("ignore", FutureWarning)
                return torch.jit.load(path, map_location="cpu")  # the user passed --trust-code
        except Exception as exc:
            raise ProbekitError(f"{path} is not a readable TorchScript archive: {_first_line(exc)}") from exc
    if options.arch:
        return load_state_dict_into(build_arch(options.arch), path)
    if is_safetensors(path):
        raise ProbekitError(f"{path} holds weights (safetensors), not a model: add --arch module:callable")
    try:
        obj = load_module_pickle(path, trust=options.trust_pickle)
    except ProbekitError:
        raise
    except Exception as exc:
        raise ProbekitError(f"{path} is not a PyTorch model file: {_first_line(exc)}") from exc
    if isinstance(obj, nn.Module):
        return obj
    if is_zoo_checkpoint(obj):
        return build_from_checkpoint(obj)
    if isinstance(obj, dict):
        raise ProbekitError(f"{path} holds weights (a state_dict), not a model: add --arch module:callable")
    raise ProbekitError(f"{path} holds a {type(obj).__name__}, not a model")


def load_torchvision(name: str, options: LoadOptions) -> nn.Module:
    """``torchvision:<name>``: the architecture, randomly initialised unless ``--weights`` is given."""
    from torchvision import models

    if name not in models.list_models():
        raise ProbekitError(f"unknown torchvision model {name!r} (see torchvision.models.list_models())")
    model = models.get_model(name, weights=None)
    return load_state_dict_into(model, options.weights) if options.weights else model


def load_zoo(name: str, options: LoadOptions) -> nn.Module:
    if name not in ZOO:
        raise ProbekitError(f"unknown zoo model {name!r}; bundled: {', '.join(sorted(ZOO))}")
    return load_zoo_model(name)


@hookimpl
def probekit_register_model_loaders(register):
    register("torchvision", load_torchvision)
    register("zoo", load_zoo)


def _identity(spec: str, options: LoadOptions) -> str:
    """sha256 of the file that holds the weights, or a note when there is none."""
    from .plugins import model_loaders

    scheme, _, argument = spec.partition(":")
    if options.weights:
        return file_sha256(options.weights)
    if Path(spec).is_file():
        return file_sha256(spec)
    name = argument if scheme == "zoo" else spec
    if name in ZOO and (scheme == "zoo" or scheme not in model_loaders()):
        return file_sha256(ZOO[name].weights_path(name))
    return "none (random initialisation)"


def load_model(spec: str, options: LoadOptions = LoadOptions()) -> LoadedModel:
    """Resolve ``--model spec`` to an eval-mode module on the CPU."""
    from .plugins import model_loaders

    loaders = model_loaders()
    scheme, _, argument = spec.partition(":")
    if options.weights and scheme != "torchvision" and not options.arch:
        raise ProbekitError("--weights goes with torchvision:<name>; for a file use --arch module:callable")
    if scheme in loaders and argument:
        model = loaders[scheme][0](argument, options)
    elif Path(spec).is_file():
        model = load_file(spec, options)
    elif spec in ZOO:
        model = load_zoo_model(spec)
    elif Path(spec).suffix or "/" in spec:
        raise ProbekitError(f"model file not found: {spec}")
    else:
        raise ProbekitError(
            f"unknown model {spec!r}: not a file, a zoo name ({', '.join(sorted(ZOO))}) "
            f"or scheme:name ({', '.join(sorted(loaders))})"
        )
    if options.target_class is not None:
        _select_target(model, spec, options.target_class)
    return LoadedModel(model.eval(), spec, _identity(spec, options))


def _select_target(model: nn.Module, spec: str, name: str) -> None:
    """``--target-class``: the class a class-conditional generator transfers every input to."""
    if not hasattr(model, "select_target"):
        raise ProbekitError(f"--target-class needs a class-conditional generator (a select_target method); "
                            f"{spec} has none")
    model.select_target(name)
