"""Checkpoints of a run in progress, so ``probekit run --resume`` continues an interrupted run.

Every ``--checkpoint-every`` batches the runner writes every per-sample
row it has buffered to the store, then ``<store>.tmp-<run id>/checkpoint.pt``
(atomically): the position of the next sample, each analysis's streaming
state (its ``merge_rules`` attributes), the errors so far, the samples
flagged NaN/Inf and the targets seen so far, with a fingerprint of the run's settings. ``--resume``
restores the state into fresh analyses (by merging it into their empty
state), reopens the per-sample arrays at that position and probes the rest,
so no sample is counted twice or skipped. The file loads with
``torch.load(weights_only=True)``: numpy arrays are stored as tensors and
restored, so reading a checkpoint cannot run code.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probekit.run.atomic import save_atomically
from probekit.errors import ProbekitError

CHECKPOINT = "checkpoint.pt"
NUMPY = "__numpy__"  # the key that marks an encoded numpy array


def encode(value: Any) -> Any:
    """``value`` with every numpy array (and scalar) turned into what ``weights_only`` loading accepts."""
    if isinstance(value, np.ndarray):
        return {NUMPY: torch.from_numpy(np.ascontiguousarray(value))}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: encode(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set)):
        return type(value)(encode(item) for item in value)
    return value


def decode(value: Any) -> Any:
    """The inverse of :func:`encode`."""
    if isinstance(value, dict):
        if set(value) == {NUMPY}:
            return value[NUMPY].numpy()
        return {key: decode(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set)):
        return type(value)(decode(item) for item in value)
    return value


def fingerprint(settings: dict) -> str:
    """A canonical text of the settings a resumed run must share with the interrupted one."""
    return json.dumps(settings, sort_keys=True, default=str)


def save(folder: Path, settings: str, position: int, states: dict, errors: dict, nonfinite: list[int],
         arrays: list, targets=None) -> None:
    """Flush ``arrays`` (per-sample rows before ``position``), then write the checkpoint atomically."""
    for array in arrays:
        array.checkpoint()
    folder.mkdir(exist_ok=True)  # the staging folder: only per-sample arrays create it before the end
    save_atomically({"settings": settings, "position": position, "states": encode(states), "errors": errors,
                     "nonfinite": nonfinite, "targets": encode(targets)}, folder / CHECKPOINT)


def load(folder: Path, settings: str) -> dict:
    """The checkpoint in ``folder``; clear errors when there is none or it belongs to other settings."""
    path = folder / CHECKPOINT
    if not path.is_file():
        raise ProbekitError(f"no checkpoint at {path}: the run stopped before its first checkpoint; start it "
                            "again without --resume (pass --overwrite)")
    try:
        with warnings.catch_warnings():  # torch's note on an unusual pickle protocol: the error below says enough
            warnings.simplefilter("ignore", UserWarning)
            saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any pickle the safe loader refuses, or a damaged file
        raise ProbekitError(f"{path} cannot be read safely ({type(exc).__name__}: it is damaged or needs code "
                            "to load); start the run again with --overwrite instead of --resume") from None
    shape = {"settings": str, "position": int, "states": dict, "errors": dict, "nonfinite": list}
    if not isinstance(saved, dict) or not all(isinstance(saved.get(k), t) for k, t in shape.items()):
        raise ProbekitError(f"{path} is not a probekit run checkpoint; start the run again with --overwrite "
                            "instead of --resume")
    saved["states"] = decode(saved["states"])
    saved["targets"] = decode(saved.get("targets"))
    if saved["settings"] != settings:
        raise ProbekitError("the interrupted run used other settings (model, data, plugins, options, batch size, "
                            "limit or seed); resume it with the same command")
    return saved
