"""The one way probekit hooks a model: forward hooks registered in a context manager and always removed."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from torch import nn

HookSpec = Iterable[tuple[str, Callable]]


@contextmanager
def forward_hooks(model: nn.Module, after: HookSpec = (), before: HookSpec = ()) -> Iterator[None]:
    """Hook ``model``'s submodules for the ``with`` block; every hook is removed on exit, also on errors.

    ``after``: ``(module path, hook(module, args, output))`` pairs, registered as forward hooks (a hook that
    returns a value replaces the module's output); ``before``: ``(module path, hook(module, args))`` pairs,
    registered as forward pre-hooks. ``""`` is the model itself.
    """
    handles = []
    try:
        for path, hook in before:
            handles.append(model.get_submodule(path).register_forward_pre_hook(hook))
        for path, hook in after:
            handles.append(model.get_submodule(path).register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()
