"""The losses analyses differentiate, by name, and how ``auto`` picks one.

``mse``: 1/2 |f - y|^2 (regression targets, the toy models); ``ce``:
cross-entropy on f as logits; ``clamped``: the paper's section 6 loss,
cross-entropy between softmax(f) and softmax of +-1 class indicators (f is
already clamped by the model). Every loss sums over samples; divide for a mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import ProbekitError
from .resnet import BranchedResNet18, indicator_targets

LOSSES = ("auto", "mse", "ce", "clamped")


def resolve_loss(name: str, model, has_classes: bool, analysis: str) -> str:
    """``auto``: clamped for a clamped branched-resnet18, ce for data with classes, else mse."""
    if name not in LOSSES:
        raise ProbekitError(f"{analysis}.loss must be one of {', '.join(LOSSES)}, not {name!r}")
    if name != "auto":
        return name
    if isinstance(model, BranchedResNet18) and model.clamp:
        return "clamped"
    return "ce" if has_classes else "mse"


def summed_loss(name: str, outputs: torch.Tensor, targets: torch.Tensor | None, analysis: str) -> torch.Tensor:
    """The loss ``name`` summed over the batch; ``outputs`` ``[N, ...]``, ``targets`` ``[N]`` or like outputs."""
    if targets is None:
        raise ProbekitError(f"{analysis} needs data with targets (the loss needs them)")
    if name == "ce":
        return F.cross_entropy(outputs, targets.long(), reduction="sum")
    if name == "clamped":
        return F.cross_entropy(outputs, indicator_targets(targets.long(), outputs.shape[1]).to(outputs.dtype),
                               reduction="sum")
    if targets.numel() != outputs.numel():
        raise ProbekitError(f"{analysis}: mse needs one target per output value; outputs "
                            f"{tuple(outputs.shape)}, targets {tuple(targets.shape)} (try --option "
                            f"{analysis}.loss=ce)")
    return 0.5 * (outputs - targets.reshape(outputs.shape).to(outputs.dtype)).pow(2).sum()
