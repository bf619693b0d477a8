"""Writing training and run checkpoints: atomically, with their settings as plain JSON."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from probekit.store.files import temporary_beside


def save_atomically(obj, path: Path) -> None:
    """``torch.save`` to a new unpredictable file beside ``path`` (never through a planted link), then rename:
    a crash leaves the old file or the new one, never half."""
    with temporary_beside(path) as (f, tmp):
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def recipe_json(recipe) -> dict:
    """A recipe dataclass as JSON-compatible values (tuples become lists), for storing and comparing."""
    return json.loads(json.dumps(asdict(recipe)))
