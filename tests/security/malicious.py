"""Builders of hostile model files, each of which touches ``marker`` when loaded the unsafe way.

Every builder returns the file's path. ``unsafe_load`` loads it the way
probekit used to (or the way a careless user would), so a test can show the
file really is hostile before it shows that probekit refuses it.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn


class _System:
    """Pickles to ``os.system(command)``."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def pickle_calling_system(folder: Path, marker: Path) -> Path:
    """A ``torch.save`` checkpoint whose unpickling runs ``touch marker``."""
    path = folder / "system.pt"
    torch.save({"model": _System(f"touch {marker}")}, path)
    return path


def export_with_pickled_weight(folder: Path, marker: Path, name: str = "model.pt") -> Path:
    """A torch.export archive (under any name) whose weight entry is a pickle that runs ``touch marker``."""
    program = torch.export.export(nn.Linear(2, 2), (torch.randn(1, 2),))
    clean = folder / "clean.pt2"
    torch.export.save(program, clean)
    path = folder / name
    with zipfile.ZipFile(clean) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("model_weights_config.json"):
                config = json.loads(data)
                config["config"]["weight"]["use_pickle"] = True
                data = json.dumps(config).encode()
            elif item.filename.endswith("data/weights/weight_0"):
                buffer = io.BytesIO()
                pickle.dump(_System(f"touch {marker}"), buffer, protocol=2)
                data = buffer.getvalue()
            dst.writestr(item, data)
    clean.unlink()
    return path


class _FileWriter(nn.Module):
    """A scripted module whose ``__setstate__`` creates the file at ``self.target`` as it is loaded."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target
        self.written = torch.zeros(1, dtype=torch.uint8)

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.target = state[0]
        self.training = state[1]
        self.written = torch.from_file(self.target, shared=True, size=8, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def torchscript_writing_file(folder: Path, marker: Path) -> Path:
    """A TorchScript archive that writes ``marker`` while ``torch.jit.load`` reads it."""
    path = folder / "scripted.pt"
    script = torch.jit.script(_FileWriter("/nonexistent-dir/x"))
    script.target = str(marker)
    torch.jit.save(script, path)
    if marker.exists():  # scripting itself must not have touched it
        marker.unlink()
    return path


def pickle_of_allowlisted_helper(folder: Path, marker: Path) -> Path:
    """A pickle that calls probekit's ``SampleArray`` (a probekit class that creates files) at ``marker``."""
    from probekit.run.sample_arrays import SampleArray

    class Call:
        def __reduce__(self):
            return (SampleArray, (str(marker), "x", ("sample",), (4,), "float32", {}))

    path = folder / "helper.pt"
    torch.save({"model": Call()}, path)
    return path


def pickle_of_cli_module(folder: Path) -> Path:
    """A torch checkpoint whose pickle calls ``probekit.__main__.main()``: importing that module to check the
    name used to run the CLI."""
    hostile = b"\x80\x02cprobekit.__main__\nmain\nq\x00)R."  # PROTO 2, GLOBAL, EMPTY_TUPLE, REDUCE, STOP
    buffer = io.BytesIO()
    torch.save(nn.Linear(1, 1), buffer)  # a real torch zip; its data.pkl is swapped for the hostile one
    path = folder / "main.pt"
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, hostile if item.filename.endswith("data.pkl") else src.read(item))
    return path


class AnsiNamed(nn.Module):
    """A module class whose pickled name carries ANSI escapes that clear the line and fake a message."""


FAKE = "\x1b[2K\x1b[1Ginfo: file is safe - rerun with --trust-pickle"


def pickle_with_ansi_name(folder: Path) -> Path:
    """A whole-module pickle naming a class ``<ESC>[2K...fake message``."""
    AnsiNamed.__qualname__ = AnsiNamed.__name__ = "Net" + FAKE
    module = AnsiNamed()
    path = folder / "ansi.pt"
    try:
        setattr(__import__(__name__, fromlist=["x"]), AnsiNamed.__name__, AnsiNamed)
        torch.save(module, path)
    finally:
        AnsiNamed.__qualname__ = AnsiNamed.__name__ = "AnsiNamed"
    return path


def unsafe_load(path: Path):
    """Load ``path`` the way that runs its code: the unsafe loader for its kind."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any(n.endswith("archive_format") for n in names):
        return torch.export.load(path)
    if any(n.endswith("constants.pkl") for n in names):
        return torch.jit.load(path)
    return torch.load(path, weights_only=False)
