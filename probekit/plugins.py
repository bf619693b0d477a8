"""The plugin manager: built-in plugins, entry-point plugins, and registries.

The core registers only its own built-ins (data sources, the torchvision
loader, branch discovery). Bundled analyses (``probekit_plugins``) and the
bundled model zoo (``probekit.zoo``) are found through the ``probekit``
entry-point group exactly like third-party plugins; CLI commands through the
``probekit.commands`` group (:mod:`probekit.commands`), which ``--help`` loads
without the heavy analysis plugins. Set ``PROBEKIT_LOAD_PLUGINS`` to a
comma-separated list of entry-point names to load only those (empty string:
none), which is handy in tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from importlib import metadata

import pluggy

from probekit import hookspecs
from probekit.errors import ProbekitError

ENTRY_POINT_GROUP = "probekit"
_BUILTIN_MODULES = ("probekit.run.datasets", "probekit.models.loaders", "probekit.models.discovery")


@dataclass(frozen=True)
class PluginInfo:
    """One loaded plugin: its name, distribution version and implemented hooks."""

    name: str
    version: str
    hooks: tuple[str, ...]


def _make_manager(group: str = ENTRY_POINT_GROUP, builtins: tuple[str, ...] = _BUILTIN_MODULES) -> pluggy.PluginManager:
    import importlib

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for module_name in builtins:
        pm.register(importlib.import_module(module_name), name=module_name)
    wanted = os.environ.get("PROBEKIT_LOAD_PLUGINS")
    names = None if wanted is None else {n.strip() for n in wanted.split(",") if n.strip()}
    for ep in metadata.entry_points(group=group):
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
    try:
        pm.check_pending()  # a hook implementation whose name matches no hook (a typo) is an error now
    except pluggy.PluginValidationError as exc:
        raise ProbekitError(f"plugin {exc.plugin_name!r}: {str(exc).splitlines()[0]}") from exc
    return pm


_versions: dict[str, str] = {}


@cache
def manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (built once, on first use)."""
    return _make_manager()


def plugin_infos() -> list[PluginInfo]:
    """Every registered plugin with its version and the hooks it implements."""
    from probekit import __version__

    pm = manager()
    infos = []
    for name, plugin in pm.list_name_plugin():
        hooks = tuple(sorted(h.name for h in pm.get_hookcallers(plugin) or ()))
        infos.append(PluginInfo(name, _versions.get(name, __version__), hooks))
    return sorted(infos, key=lambda i: i.name)


def collect(hook_name: str) -> dict:
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


def datasets() -> dict:
    """``{scheme: (factory, plugin name)}``."""
    return collect("probekit_register_datasets")


def model_loaders() -> dict:
    """``{scheme: (loader, plugin name)}``."""
    return collect("probekit_register_model_loaders")


def model_names() -> dict:
    """``{name: (loader, description, data, plugin name)}`` of the bare model names plugins registered."""
    found: dict = {}
    for impl in manager().hook.probekit_register_model_names.get_hookimpls():

        def register(name, loader, description="", data="", _plugin=impl.plugin_name):
            found[name] = (loader, description, data, _plugin)

        impl.function(register)
    return found


def safe_model_modules() -> tuple[str, ...]:
    """Module names whose ``nn.Module`` classes whole-module pickles may use, from every plugin."""
    return tuple(sorted({name for names in manager().hook.probekit_safe_model_modules() for name in names}))


def plugin_version(plugin_name: str) -> str:
    """Version of the distribution that provides ``plugin_name``."""
    from probekit import __version__

    manager()
    return _versions.get(plugin_name, __version__)
