"""Per-class checkpoints of NAD's masks, so an interrupted ``probekit experiment nad --checkpoint-dir DIR``
resumes at the first class it had not finished.

``DIR/class-<c>.pt`` holds class c's mask logits and loss curve with the fingerprint of what the masks depend on
(:data:`MASK_SETTINGS` of the config, the model's sha256, the training data spec: the evaluation's settings, such as
``--test-data``, ``--permutations`` or ``--mosaics``, may change between runs and reuse the masks); it is written
atomically once the class is learnt, and read
with ``torch.load(weights_only=True)``, so a checkpoint file cannot run code. A file whose fingerprint differs
is an error, never silently reused or overwritten.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from probekit.errors import ProbekitError
from probekit.run.atomic import save_atomically


MASK_SETTINGS = ("layers", "branch_gates", "beta", "lr", "epochs", "batch_size", "train_per_class", "seed")


class MaskCheckpoints:
    """The checkpoint folder of one NAD run; ``settings`` is everything the masks depend on (JSON-able)."""

    def __init__(self, folder: str | Path, settings: dict):
        self.folder = Path(folder)
        self.fingerprint = json.dumps(settings, sort_keys=True, default=str)
        if self.folder.exists() and not self.folder.is_dir():
            raise ProbekitError(f"--checkpoint-dir {self.folder} is not a folder")
        self.folder.mkdir(parents=True, exist_ok=True)

    @classmethod
    def for_run(cls, folder: str | Path, config, model_sha256: str, data: str) -> MaskCheckpoints:
        """The checkpoints of the masks ``config`` learns on this model and training data."""
        settings = asdict(config)
        return cls(folder, {"masks": {key: settings[key] for key in MASK_SETTINGS}, "model_sha256": model_sha256,
                            "data": data})

    def _path(self, c: int) -> Path:
        return self.folder / f"class-{c}.pt"

    def load(self, c: int) -> tuple[dict[str, torch.Tensor], list[float]] | None:
        """Class ``c``'s saved ``(mask logits, loss curve)``, or ``None`` when it was not saved yet."""
        path = self._path(c)
        if not path.is_file():
            return None
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged or foreign file: say which, in one line
            raise ProbekitError(f"{path} is not a NAD checkpoint ({type(exc).__name__}); remove it or choose "
                                "another --checkpoint-dir") from None
        if not isinstance(saved, dict) or saved.get("fingerprint") != self.fingerprint:
            raise ProbekitError(f"{path} was saved by a run with other settings (model, data or options); "
                                "choose another --checkpoint-dir")
        masks = saved["masks"]
        if not isinstance(masks, dict) or not all(isinstance(m, torch.Tensor) for m in masks.values()):
            raise ProbekitError(f"{path} holds no masks")
        return masks, [float(v) for v in saved["losses"]]

    def save(self, c: int, masks: dict[str, torch.Tensor], losses: list[float]) -> None:
        """Write class ``c``'s masks atomically."""
        save_atomically({"fingerprint": self.fingerprint, "masks": {k: m.detach().cpu() for k, m in masks.items()},
                         "losses": list(losses)}, self._path(c))
