"""``resnet20-cifar10``: the CIFAR ResNet20 of He et al. (2016), written from its published description, to carry the
third-party pretrained weights in ``../shared/models/resnet20-cifar10`` (BSD-2-Clause, Yerlan Idelbayev's
pytorch_resnet_cifar10). A plain, unbranched classifier: probekit probes its nine blocks as branches, three per
stage, by the glob it names (``probekit_branch_glob``), see ``docs/models.md``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from probekit.errors import ProbekitError
from probekit.zoo.resnet import BasicBlock

STAGES = (16, 32, 64)
BLOCKS = 3
MEAN = (0.485, 0.456, 0.406)  # the normalisation the weights were trained with
STD = (0.229, 0.224, 0.225)


class PadShortcut(nn.Module):
    """The "option A" shortcut on a change of shape: every second pixel (``x[:, :, ::2, ::2]``), zero-padded with
    ``pad`` channels on each side; no parameters."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class Block(BasicBlock):
    """:class:`BasicBlock` with the option A shortcut: ``[N, cin, H, W] -> [N, cout, H/s, W/s]``."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__(cin, cout, stride)
        if stride != 1 or cin != cout:
            self.shortcut = PadShortcut(cout // 4)


class ResNet20(nn.Module):
    """``[N, 3, 32, 32]`` in [0, 1] -> ``[N, 10]`` logits; the input normalisation is part of the model."""

    probekit_branch_glob = "layer*.*"  # each residual block is a branch; a stage is a layer
    probekit_nad_layers = "bn1,layer*.*"  # NAD's default gates: the stem and every block output

    def __init__(self, classes: int = 10):
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))
        self.conv1 = nn.Conv2d(3, STAGES[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGES[0])
        channels, stages = STAGES[0], []
        for i, planes in enumerate(STAGES):
            blocks = [Block(channels if b == 0 else planes, planes, 2 if i and b == 0 else 1) for b in range(BLOCKS)]
            stages.append(nn.Sequential(*blocks))
            channels = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(STAGES[-1], classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1((x - self.mean) / self.std)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def resnet20() -> ResNet20:
    """The zoo builder (no options)."""
    return ResNet20()


def import_published(path: Path) -> dict:
    """The published file (``{"best_prec1", "state_dict"}`` with ``module.`` keys) as a zoo checkpoint."""
    published = torch.load(path, map_location="cpu", weights_only=True)
    state = {key.removeprefix("module."): value for key, value in published["state_dict"].items()}
    model = ResNet20()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [key for key in missing if key not in ("mean", "std") and not key.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ProbekitError(f"{path} is not the published ResNet20: missing {missing}, unexpected {unexpected}")
    return {"recipe": "resnet20-cifar10", "config": {}, "state_dict": model.state_dict(),
            "metrics": {"published_test_accuracy": float(published["best_prec1"]) / 100,
                        "source": "akamaster/pytorch_resnet_cifar10 resnet20-12fca82f.th (BSD-2-Clause)"}}
