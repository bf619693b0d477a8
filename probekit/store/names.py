"""Node (and analysis) names: the one shape a name from a plugin or from a store may have."""

from __future__ import annotations

import re

from probekit.errors import ProbekitError

NODE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")


def check_node_name(name: str) -> str:
    """``name`` if it is a safe node (and analysis) name: lowercase letters, digits, ``-`` and ``_``, starting
    with a letter, at most 64 characters; so no path separators, ``..`` or hidden files."""
    if not isinstance(name, str) or not NODE_NAME.fullmatch(name):
        raise ProbekitError(f"{name!r} is not a valid analysis or node name (lowercase letters, digits, - and _, "
                            "starting with a letter)")
    return name
