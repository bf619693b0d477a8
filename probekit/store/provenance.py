"""Provenance attrs shared by every store probekit writes (see docs/schema.md)."""

from __future__ import annotations

import sys
from datetime import datetime, timezone


def base_attrs(seed: int, command: str | None = None) -> dict:
    """``created_at``, versions, ``seed`` and the command line (or ``command``: the call that made the run)."""
    import torch

    from probekit import __version__

    return {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "probekit_version": __version__,
        "torch_version": torch.__version__,
        "seed": seed,
        "command": command if command is not None else " ".join(sys.argv),
    }
