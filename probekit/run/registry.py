"""The registered analyses, each validated (:mod:`probekit.run.validation`) when the registry is read."""

from __future__ import annotations

import warnings

from probekit.errors import ProbekitError
from probekit.plugins import broken_plugins, collect


def analyses() -> dict:
    """``{analysis name: (Analysis class, plugin name)}`` of the valid analyses. Names that could not be a store
    node (see :func:`probekit.store.results.check_node_name`) are left out with a warning; classes that fail
    :func:`probekit.run.validation.check_class` are left out and listed by :func:`invalid_analyses`, as are
    plugins that are left out whole (:func:`probekit.plugins.broken_plugins`), under the plugin's name."""
    return checked_analyses()[0]


def invalid_analyses() -> dict[str, str]:
    """``{analysis name: what is wrong}`` of the registered analyses that failed validation."""
    return checked_analyses()[1]


def checked_analyses() -> tuple[dict, dict[str, str]]:
    """``(analyses(), invalid_analyses())`` from one pass over the registrations (each class validated once)."""
    from probekit.run.validation import check_class
    from probekit.store.results import check_node_name

    found, invalid = {}, {}
    for name, (cls, plugin) in collect("probekit_register_analyses").items():
        try:
            check_node_name(name)
        except ProbekitError as exc:
            warnings.warn(f"plugin {plugin!r}: {exc}; the analysis is ignored", stacklevel=2)
            continue
        try:
            check_class(cls)
        except ProbekitError as exc:
            invalid[name] = f"plugin {plugin!r}: {exc}"
            continue
        found[name] = (cls, plugin)
    for plugin, reason in broken_plugins().items():  # asked for by its plugin's name, it fails in one line
        if plugin not in found:
            invalid.setdefault(plugin, f"plugin {plugin!r} is left out: {reason}")
    return found, invalid


