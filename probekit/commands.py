"""CLI commands from plugins (``probekit_register_commands``), found cheaply so ``probekit --help`` stays fast.

The ``probekit.commands`` entry points are read straight from the installed
distributions' ``entry_points.txt`` (no ``importlib.metadata``, no pluggy:
those cost about 30 ms at every start), cached in
``~/.cache/probekit/command-entry-points.json`` for as long as no folder on
``sys.path`` changes, and each named module's
``probekit_register_commands(subparsers)`` is called. ``PROBEKIT_LOAD_PLUGINS``
limits them by entry-point name, as for the other plugins.
"""

from __future__ import annotations

import os
import sys
from importlib import import_module

GROUP = "probekit.commands"


def _entry_points_files() -> list[str]:
    """``entry_points.txt`` of every distribution on ``sys.path`` (one directory listing per entry)."""
    files = []
    for entry in sys.path:
        try:
            names = sorted(os.listdir(entry or "."))
        except OSError:
            continue
        for name in names:
            if name.endswith((".dist-info", ".egg-info")):
                file = os.path.join(entry or ".", name, "entry_points.txt")
                if os.path.isfile(file):
                    files.append(file)
    return files


def _group_entries(text: str) -> list[tuple[str, str]]:
    """``(name, "module[:attr]")`` of the :data:`GROUP` section of an ``entry_points.txt``."""
    entries, inside = [], False
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            inside = line == f"[{GROUP}]"
        elif inside and "=" in line and not line.startswith(("#", ";")):
            name, _, value = line.partition("=")
            entries.append((name.strip(), value.strip()))
    return entries


def _scan() -> list[tuple[str, str]]:
    """Every ``(name, "module[:attr]")`` of the group, first distribution on ``sys.path`` first."""
    entries = []
    for file in _entry_points_files():
        with open(file, encoding="utf-8", errors="replace") as f:
            entries += _group_entries(f.read())
    return entries


def _cache_file() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "probekit", "command-entry-points.txt")


def _path_stamp() -> str:
    """``sys.path`` with each folder's modification time, one per line: installing or removing a distribution
    changes it."""
    lines = []
    for entry in sys.path:
        try:
            lines.append(f"{entry}\t{os.stat(entry or '.').st_mtime_ns}")
        except OSError:
            lines.append(f"{entry}\t-")
    return "\n".join(lines)


def _entries() -> list[tuple[str, str]]:
    """The group's entries, from a cache that is valid while no folder on ``sys.path`` changed (a directory
    listing of site-packages costs a few ms at every start). The cache is plain text: the stamp, a blank line,
    then one ``name<TAB>value`` line per entry."""
    stamp, path = _path_stamp(), _cache_file()
    try:
        with open(path, encoding="utf-8") as f:
            cached_stamp, _, body = f.read().partition("\n\n")
        if cached_stamp == stamp:
            return [tuple(line.split("\t", 1)) for line in body.splitlines() if "\t" in line]
    except OSError:
        pass
    entries = _scan()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(stamp + "\n\n" + "".join(f"{name}\t{value}\n" for name, value in entries))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: scan every time
    return entries


_loaded: dict[str, tuple] = {}


def command_plugins() -> tuple:
    """The command plugins (modules, or their named attribute), first distribution on ``sys.path`` first."""
    if "plugins" in _loaded:
        return _loaded["plugins"]
    wanted = os.environ.get("PROBEKIT_LOAD_PLUGINS")
    names = None if wanted is None else {n.strip() for n in wanted.split(",") if n.strip()}
    found: dict[str, object] = {}
    for name, value in _entries():
        if name in found or (names is not None and name not in names):
            continue
        module, _, attr = value.partition(":")
        plugin = import_module(module.strip())
        found[name] = getattr(plugin, attr.strip()) if attr else plugin
    _loaded["plugins"] = tuple(found.values())
    return _loaded["plugins"]


def add_plugin_commands(subparsers) -> None:
    """Let every command plugin add its subcommands."""
    for plugin in command_plugins():
        register = getattr(plugin, "probekit_register_commands", None)
        if register is not None:
            register(subparsers=subparsers)
