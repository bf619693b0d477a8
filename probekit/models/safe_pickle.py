"""Loading whole-module pickles (``torch.save(model)``) without running foreign code.

``torch.load(weights_only=True)`` refuses every global it does not know, and
calls (REDUCE) or fills in (BUILD) only the globals it is given. So what we
give it must be harmless whatever arguments the file passes:

* ``nn.Module`` subclasses defined in ``torch.nn``, ``torchvision.models``,
  ``torchvision.ops``, :mod:`probekit.models.branched`, :mod:`probekit.models.experts` and the model modules
  plugins name (``probekit_safe_model_modules``: the bundled zoo's
  architectures);
* the functions of ``torch.nn.functional`` (activations kept as attributes);
* ``functools.partial`` (which cannot call what it wraps here).

Nothing else: no other probekit class (some write files or open
connections), nothing from the standard library or the rest of torch. The
check looks names up in modules that are already imported; it never imports
a module a file names. Names from the file are escaped before they are
printed (see docs/security.md).
"""

from __future__ import annotations

import functools
import importlib
import sys

import torch
from torch import nn

from probekit.errors import ProbekitError, quoted

LIBRARY_PREFIXES = ("torch.nn.", "torchvision.models.", "torchvision.ops.")
CORE_MODEL_MODULES = ("probekit.models.branched", "probekit.models.experts")
SAFE_EXACT = {"functools.partial": functools.partial}
SHOWN = 5  # refused names listed in one message


class UnsafePickle(ProbekitError):
    """The checkpoint needs a global outside the allowlist."""


def model_modules() -> tuple[str, ...]:
    """probekit's and the plugins' model modules (named by installed code, never by a file)."""
    from probekit.plugins import safe_model_modules

    return CORE_MODEL_MODULES + safe_model_modules()


def _import_allowed_modules() -> None:
    """Import the packages whose classes may be allowed (never a module named by a file)."""
    import torchvision.models  # noqa: F401 - registers torchvision.models.* and torchvision.ops.*
    import torchvision.ops  # noqa: F401

    for name in model_modules():
        importlib.import_module(name)


@functools.lru_cache(maxsize=1)
def _functional_names() -> dict[str, object]:
    """``{pickled name: function}`` of ``torch.nn.functional``'s callables (some are C builtins named
    ``torch._C._nn.*``)."""
    out = {}
    for attr, obj in vars(nn.functional).items():
        if callable(obj) and not isinstance(obj, type) and not attr.startswith("_"):
            out[f"torch.nn.functional.{attr}"] = obj
            module, name = getattr(obj, "__module__", None), getattr(obj, "__name__", None)
            if module and name:
                out[f"{module}.{name}"] = obj
    return out


def _lookup(qualified: str):
    """The object named ``module.Qual.Name`` in an already-imported module, or None."""
    parts = qualified.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:cut]))
        if module is None:
            continue
        obj = module
        for attr in parts[cut:]:
            obj = getattr(obj, attr, None)
            if obj is None:
                return None
        return obj
    return None


def allowed(qualified: str):
    """The object for an allowlisted global, or ``None`` when it is not allowed."""
    if qualified in SAFE_EXACT:
        return SAFE_EXACT[qualified]
    if qualified in _functional_names():
        return _functional_names()[qualified]
    module = qualified.rpartition(".")[0]
    if not (qualified.startswith(LIBRARY_PREFIXES) or module in model_modules()):
        return None
    _import_allowed_modules()
    obj = _lookup(qualified)
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        return None
    home = obj.__module__  # where the class is defined, not where the file says it lives
    return obj if home.startswith(LIBRARY_PREFIXES) or home in model_modules() else None


NOT_MODELS = ("torch", "torchvision", "probekit", "probekit_plugins", "numpy", "scipy", "pandas", "PIL", "builtins")


def _plausible_model_class(qualified: str) -> bool:
    """Whether a refused name could be the user's own model class (``mypackage.nets.MyNet``): a class-like
    (capitalised) name outside the standard library and the libraries whose allowed parts are already allowed or
    that are no model (``numpy.save``, ``torchvision.io.write_file``, ``functools.partial`` are not)."""
    root, last = qualified.partition(".")[0], qualified.rpartition(".")[2]
    return "." in qualified and last[:1].isupper() and root not in sys.stdlib_module_names and root not in NOT_MODELS


def refusal(path: str, refused: list[str]) -> str:
    """The one-line message for a pickle that needs ``refused`` globals (escaped, as they come from a file)."""
    names = ", ".join(quoted(n) for n in refused[:SHOWN]) + (f" and {len(refused) - SHOWN} more"
                                                             if len(refused) > SHOWN else "")
    head = f"{path} tries to import {names}"
    if not all(_plausible_model_class(n) for n in refused):
        return (f"{head}, which is no model class (it can run commands, touch files or call functions): "
                "refused. This file is not a plain model; probekit will not load it")
    return (f"{head}, which is not on probekit's safe list (torch.nn, torchvision.models/ops and probekit's "
            "model classes). Only if you trust the file's author: pass --trust-pickle (it runs code from the "
            "file); or save a state_dict or safetensors file and pass --arch module:callable")


def load_module_pickle(path: str, trust: bool = False):
    """``torch.load`` a checkpoint safely; with ``trust`` it may run code from the file."""
    if trust:
        return torch.load(path, map_location="cpu", weights_only=False)  # the user passed --trust-pickle
    needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    safe = {name: allowed(name) for name in needed}
    refused = [name for name, obj in safe.items() if obj is None]
    if refused:
        raise UnsafePickle(refusal(path, refused))
    with torch.serialization.safe_globals(list(safe.values())):
        return torch.load(path, map_location="cpu", weights_only=True)
