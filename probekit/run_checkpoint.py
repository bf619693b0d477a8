"""Checkpoints of a run in progress, so ``probekit run --resume`` continues an interrupted run.

Every ``--checkpoint-every`` batches the runner writes every per-sample
row it has buffered to the store, then ``<store>.tmp/checkpoint.pt``
(atomically): the position of the next sample, each analysis's streaming
state (its ``merge_rules`` attributes), the errors so far and the samples
flagged NaN/Inf, with a fingerprint of the run's settings. ``--resume``
restores the state into fresh analyses (by merging it into their empty
state), reopens the per-sample arrays at that position and probes the rest,
so no sample is counted twice or skipped. The file is a pickle written by
the run itself; resume only your own runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .errors import ProbekitError

CHECKPOINT = "checkpoint.pt"


def fingerprint(settings: dict) -> str:
    """A canonical text of the settings a resumed run must share with the interrupted one."""
    return json.dumps(settings, sort_keys=True, default=str)


def save(folder: Path, settings: str, position: int, states: dict, errors: dict, nonfinite: list[int],
         arrays: list) -> None:
    """Flush ``arrays`` (per-sample rows before ``position``), then write the checkpoint atomically."""
    for array in arrays:
        array.checkpoint()
    path = folder / CHECKPOINT
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"settings": settings, "position": position, "states": states, "errors": errors,
                "nonfinite": nonfinite}, tmp)
    os.replace(tmp, path)


def load(folder: Path, settings: str) -> dict:
    """The checkpoint in ``folder``; clear errors when there is none or it belongs to other settings."""
    path = folder / CHECKPOINT
    if not path.is_file():
        raise ProbekitError(f"no checkpoint at {path}: the run stopped before its first checkpoint; start it "
                            "again without --resume (pass --overwrite)")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    if saved["settings"] != settings:
        raise ProbekitError("the interrupted run used other settings (model, data, plugins, options, batch size, "
                            "limit or seed); resume it with the same command")
    return saved
