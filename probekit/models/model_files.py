"""Model files: what kind a file is (from its contents), and loading each kind within the policy of
docs/security.md. Nothing here runs code from a file unless a trust flag says so.
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

from probekit.errors import MAX_SHOWN, ProbekitError, escape
from probekit.models.graph_models import load_exported
from probekit.models.safe_pickle import load_module_pickle


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


def _local_module_hint(module_name: str, exc: BaseException) -> str:
    """Why a module file in the working folder is not found, and how to make it importable."""
    top = module_name.split(".")[0]
    if not isinstance(exc, ModuleNotFoundError) or not (Path(f"{top}.py").is_file() or Path(top).is_dir()):
        return ""
    return (f" ({top} is in the working folder, which is not on the probekit command's import path, so that a "
            f"file there cannot run by accident; to import it: PYTHONPATH=. probekit ...)")


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
        raise ProbekitError(f"--arch {arch}: {_first_line(exc)}{_local_module_hint(module_name, exc)}") from exc
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


def load_file(path: str, options: LoadOptions) -> nn.Module | dict:
    """Load a model file of any supported kind (programs only with ``trust_code``; see docs/security.md): a
    module, or the dict a checkpoint holds (see :func:`probekit.models.loading.load_model`)."""
    kind = _archive_kind(path)
    if kind in PROGRAMS and not options.trust_code:
        raise ProbekitError(f"{path} is {PROGRAMS[kind]}. Only if you trust the file's author: pass --trust-code; "
                            "or ask for a state_dict or safetensors file and pass --arch module:callable")
    if kind == "export":
        return load_exported(path, trust_code=options.trust_code)
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
    if isinstance(obj, (nn.Module, dict)):
        return obj  # a dict may be a checkpoint that a plugin builds (probekit_model_from_checkpoint)
    raise ProbekitError(f"{path} holds a {type(obj).__name__}, not a model")


