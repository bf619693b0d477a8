"""Loading whole-module pickles (``torch.save(model)``) without running foreign code.

``torch.load(weights_only=True)`` refuses every global it does not know. We
look at the globals a checkpoint needs, allow the classes of torch.nn,
torchvision.models/ops and probekit (plus ``functools.partial``), and refuse
anything else by name. Nothing from the file is imported or called before
that check passes.
"""

from __future__ import annotations

import functools
import importlib
import inspect

import torch

from .errors import ProbekitError

SAFE_PREFIXES = ("torch.nn.", "torchvision.models.", "torchvision.ops.", "probekit.", "probekit_plugins.")
SAFE_EXACT = {"functools.partial": functools.partial}


class UnsafePickle(ProbekitError):
    """The checkpoint needs a class outside the allowlist."""


def _resolve(qualified: str):
    """Import the object named ``module.path.Name`` (only called for allowlisted names)."""
    parts = qualified.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(qualified)


def _allowed(qualified: str):
    """The object for an allowlisted global, or ``None`` when it is not allowed."""
    if qualified in SAFE_EXACT:
        return SAFE_EXACT[qualified]
    if not qualified.startswith(SAFE_PREFIXES):
        return None
    try:
        obj = _resolve(qualified)
    except (ImportError, AttributeError):
        return None
    is_nn_function = inspect.isfunction(obj) and obj.__module__.startswith("torch.nn.functional")
    return obj if inspect.isclass(obj) or is_nn_function else None


def load_module_pickle(path: str, trust: bool = False):
    """``torch.load`` a checkpoint safely; with ``trust`` it may run code from the file."""
    if trust:
        return torch.load(path, map_location="cpu", weights_only=False)  # the user passed --trust-pickle
    needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    safe = []
    for qualified in needed:
        obj = _allowed(qualified)
        if obj is None:
            raise UnsafePickle(
                f"{path} needs {qualified}, which is not on probekit's safe list (torch.nn, "
                "torchvision.models, probekit); if you trust the file pass --trust-pickle (it can run "
                "arbitrary code), or save a state_dict and pass --arch module:callable"
            )
        safe.append(obj)
    with torch.serialization.safe_globals(safe):
        return torch.load(path, map_location="cpu", weights_only=True)
