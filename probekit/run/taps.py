"""Taps: raw module outputs (or inputs) an analysis asks for, delivered unflattened in ``Batch.taps``.

An analysis declares ``taps = {"maps": Tap("layer1.*"), "features": Tap("linear", "input", per_branch=True)}``.
A tap's ``path`` is a module-path glob (``*`` within one dotted segment, ``**`` across); with
``per_branch=True`` it is relative to each branch module (``""`` is the branch module itself), so
``Tap("linear", "input", per_branch=True)`` is every branch's penultimate features. Each batch then carries
``batch.taps[tap name][key]``: a detached copy of the tensor, ``[N, ...]`` as the module saw or made it, where the
key is the module path (or the branch name, with ``per_branch``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from probekit.errors import ProbekitError
from probekit.models.branches import BranchSet, glob_regex


@dataclass(frozen=True)
class Tap:
    """A module output (``kind="output"``) or first input (``"input"``) to deliver, by path glob."""

    path: str
    kind: Literal["output", "input"] = "output"
    per_branch: bool = False

    def __post_init__(self):
        if self.kind not in ("output", "input"):
            raise ProbekitError(f"Tap kind must be output or input, not {self.kind!r}")


def resolve(tap: Tap, model: nn.Module, branchset: BranchSet, where: str) -> dict[str, str]:
    """``{key: module path}`` for ``tap`` on ``model``: every matching module, or with ``per_branch`` the module at
    ``tap.path`` below each summed or named branch (keyed by the branch name)."""
    paths = {path for path, _ in model.named_modules()}
    if tap.per_branch:
        found = {}
        for layer in branchset.layers:
            if len(layer.modules) != len(layer.branches):
                raise ProbekitError(f"{where}: per-branch taps need branch modules; the {layer.kind} layer "
                                    f"{layer.name} reads all its branches from {layer.modules[0]} (tap it instead)")
            for name, module in zip(layer.branches, layer.modules, strict=True):
                target = f"{module}.{tap.path}" if tap.path else module
                if target not in paths:
                    raise ProbekitError(f"{where}: branch {name} has no module {tap.path!r}")
                found[name] = target
        return found
    regex = glob_regex(tap.path)
    found = {path: path for path in sorted(paths) if path and regex.match(path)}
    if not found:
        raise ProbekitError(f"{where}: tap {tap.path!r} matches no module path")
    return found
