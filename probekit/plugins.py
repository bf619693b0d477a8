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
import warnings
from dataclasses import dataclass
from functools import cache
from importlib import metadata

import pluggy

from probekit import hookspecs

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
        except Exception as exc:  # a broken third-party plugin must not kill the CLI: it is left out
            _leave_out(ep.name, f"its module {ep.value} failed to import ({type(exc).__name__}: {exc})")
            continue
        try:
            pm.register(plugin, name=ep.name)
            pm.check_pending()  # a hook implementation whose name matches no hook (a typo) is an error now
        except (pluggy.PluginValidationError, ValueError) as exc:
            if pm.is_registered(plugin):
                pm.unregister(plugin)
            _leave_out(ep.name, f"it does not register: {str(exc).splitlines()[0]}")
            continue
        dist = ep.dist
        _versions[ep.name] = dist.version if dist is not None else "unknown"
    return pm


def _leave_out(name: str, reason: str) -> None:
    """Record a plugin that cannot be used, and say so in one warning line."""
    _broken[name] = reason
    warnings.warn(PluginWarning(f"plugin {name!r} is left out: {reason}"), stacklevel=3)


class PluginWarning(UserWarning):
    """A plugin that is left out (it failed to import or register); the others work."""


_broken: dict[str, str] = {}  # plugin name -> why it is left out
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


def broken_plugins() -> dict[str, str]:
    """``{plugin name: why it is left out}`` of the plugins that failed to import, register or run their
    ``register`` hooks."""
    manager()
    return dict(_broken)


def collect(hook_name: str, entry=None) -> dict:
    """Call a ``register``-style hook; return ``{key: (value, plugin_name)}``. ``entry(*args)`` turns the
    arguments of one ``register`` call into ``(key, value)`` (default: ``register(key, value)`` or
    ``register(AnalysisClass)``). A plugin whose hook raises contributes nothing and is left out
    (:func:`broken_plugins`)."""
    pm = manager()
    found: dict = {}
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        mine: dict = {}

        def register(*args, _plugin=impl.plugin_name, _into=mine, **kwargs):
            key, value = (entry or _key_value)(*args, **kwargs)
            _into[key] = (value, _plugin)

        try:
            impl.function(register)
        except Exception as exc:  # noqa: BLE001 - a plugin's own fault, reported and isolated
            pm.unregister(name=impl.plugin_name)
            _leave_out(impl.plugin_name, f"its {hook_name} hook raised {type(exc).__name__}: {exc}")
            continue
        found.update(mine)
    return found


def _key_value(key, value=None) -> tuple:
    return (key.name, key) if value is None else (key, value)  # register(AnalysisClass) or register(key, value)


def datasets() -> dict:
    """``{scheme: (factory, plugin name)}``."""
    return collect("probekit_register_datasets")


def model_loaders() -> dict:
    """``{scheme: (loader, plugin name)}``."""
    return collect("probekit_register_model_loaders")


def model_names() -> dict:
    """``{name: (loader, description, data, plugin name)}`` of the bare model names plugins registered."""
    found = collect("probekit_register_model_names",
                    lambda name, loader, description="", data="": (name, (loader, description, data)))
    return {name: (*value, plugin) for name, (value, plugin) in found.items()}


def safe_model_modules() -> tuple[str, ...]:
    """Module names whose ``nn.Module`` classes whole-module pickles may use, from every plugin."""
    return tuple(sorted({name for names in manager().hook.probekit_safe_model_modules() for name in names}))


def plugin_version(plugin_name: str) -> str:
    """Version of the distribution that provides ``plugin_name``."""
    from probekit import __version__

    manager()
    return _versions.get(plugin_name, __version__)
