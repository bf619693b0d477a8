"""Writing training and run checkpoints: atomically, with their settings as plain JSON."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch


def save_atomically(obj, path: Path) -> None:
    """``torch.save`` to ``<path>.tmp``, then rename: a crash leaves the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def recipe_json(recipe) -> dict:
    """A recipe dataclass as JSON-compatible values (tuples become lists), for storing and comparing."""
    return json.loads(json.dumps(asdict(recipe)))
