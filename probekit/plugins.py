"""The plugin manager: built-in plugins, entry-point plugins, and registries.

Bundled analyses (``probekit_plugins``) are found through the ``probekit``
entry-point group exactly like third-party ones. Set ``PROBEKIT_LOAD_PLUGINS``
to a comma-separated list of entry-point names to load only those (empty
string: none), which is handy in tests.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from functools import cache
from importlib import metadata

import pluggy

from . import hookspecs
from .errors import ProbekitError

ENTRY_POINT_GROUP = "probekit"
_BUILTIN_MODULES = ("probekit.datasets", "probekit.loading", "probekit.discovery", "probekit.toy_sweep_plot",
                    "probekit.branch_count_plot")


@dataclass(frozen=True)
class PluginInfo:
    """One loaded plugin: its name, distribution version and implemented hooks."""

    name: str
    version: str
    hooks: tuple[str, ...]


def _make_manager() -> pluggy.PluginManager:
    import importlib

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for module_name in _BUILTIN_MODULES:
        pm.register(importlib.import_module(module_name), name=module_name)
    wanted = os.environ.get("PROBEKIT_LOAD_PLUGINS")
    names = None if wanted is None else {n.strip() for n in wanted.split(",") if n.strip()}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if names is not None and ep.name not in names:
            continue
        if pm.get_plugin(ep.name) is not None:
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken third-party plugin must not kill the CLI
            raise ProbekitError(f"plugin {ep.name!r} ({ep.value}) failed to import: {exc}") from exc
        pm.register(plugin, name=ep.name)
        dist = ep.dist
        _versions[ep.name] = dist.version if dist is not None else "unknown"
    return pm


_versions: dict[str, str] = {}


@cache
def manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (built once, on first use)."""
    return _make_manager()


def plugin_infos() -> list[PluginInfo]:
    """Every registered plugin with its version and the hooks it implements."""
    from . import __version__

    pm = manager()
    infos = []
    for name, plugin in pm.list_name_plugin():
        hooks = tuple(sorted(h.name for h in pm.get_hookcallers(plugin) or ()))
        infos.append(PluginInfo(name, _versions.get(name, __version__), hooks))
    return sorted(infos, key=lambda i: i.name)


def _collect(hook_name: str) -> dict:
    """Call a ``register``-style hook; return ``{key: (value, plugin_name)}``."""
    pm = manager()
    found: dict = {}
    for impl in getattr(pm.hook, hook_name).get_hookimpls():

        def register(key, value=None, _plugin=impl.plugin_name):
            if value is None:  # register(AnalysisClass)
                key, value = key.name, key
            found[key] = (value, _plugin)

        impl.function(register)
    return found


def analyses() -> dict:
    """``{analysis name: (Analysis class, plugin name)}``; names that could not be a store node (see
    :func:`probekit.store.check_node_name`) are left out with a warning."""
    from .store import check_node_name

    found = {}
    for name, (cls, plugin) in _collect("probekit_register_analyses").items():
        try:
            check_node_name(name)
        except ProbekitError as exc:
            warnings.warn(f"plugin {plugin!r}: {exc}; the analysis is ignored", stacklevel=2)
            continue
        found[name] = (cls, plugin)
    return found


def datasets() -> dict:
    """``{scheme: (factory, plugin name)}``."""
    return _collect("probekit_register_datasets")


def model_loaders() -> dict:
    """``{scheme: (loader, plugin name)}``."""
    return _collect("probekit_register_model_loaders")


def plugin_version(plugin_name: str) -> str:
    """Version of the distribution that provides ``plugin_name``."""
    from . import __version__

    manager()
    return _versions.get(plugin_name, __version__)
