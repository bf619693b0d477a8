"""``branched-resnet18``: M slim ResNet18 branches summed (paper section 6).

Each branch is the kuangliu/pytorch-cifar ResNet18 (BasicBlock, [2, 2, 2, 2])
with stage widths (6, 11, 22, 44) instead of (64, 128, 256, 512): 84,105
parameters, the paper's "about 0.08M". The model normalises its [0, 1] input
with the CIFAR-10 mean and std, sums the branches' logits and, in the paper's
scheme, clamps the sum to [-1, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from probekit.models.branched import SummedBranches
from probekit.models.losses import indicator_targets

WIDTHS = (6, 11, 22, 44)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a (projected) shortcut, then ReLU: ``[N, cin, H, W] -> [N, cout, H/s, W/s]``."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SlimResNet18(nn.Module):
    """One branch: ``[N, 3, 32, 32]`` (normalised) -> ``[N, classes]`` logits."""

    def __init__(self, widths: tuple[int, ...] = WIDTHS, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, cin = [], widths[0]
        for i, cout in enumerate(widths):
            stages.append(nn.Sequential(BasicBlock(cin, cout, 1 if i == 0 else 2), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(widths[-1], classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


class BranchedResNet18(SummedBranches):
    """``f(x) = clamp(sum_k v_k(normalise(x)), -1, 1)``; ``[N, 3, 32, 32]`` in [0, 1] -> ``[N, classes]``.

    ``clamp=False`` gives the plain-logits scheme.
    """

    probekit_nad_layers = "branches.*.bn1,branches.*.layer*.*"  # NAD's default gates: stems and block outputs

    def __init__(self, branches: int = 16, widths: tuple[int, ...] = WIDTHS, classes: int = 10, clamp: bool = True):
        super().__init__(SlimResNet18(tuple(widths), classes) for _ in range(branches))
        self.clamp = clamp
        self.register_buffer("mean", torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CIFAR10_STD).view(1, 3, 1, 1))

    def forward(self, x):
        f = super().forward((x - self.mean) / self.std)
        return f.clamp(-1.0, 1.0) if self.clamp else f

    @property
    def probekit_loss(self) -> str | None:
        """The loss the model was trained with, for analyses' ``loss=auto`` (:mod:`probekit.models.losses`)."""
        return "clamped" if self.clamp else None


def branched_resnet18(branches: int = 16, widths: tuple[int, ...] = WIDTHS, clamp: bool = True) -> BranchedResNet18:
    """The ``branched-resnet18`` family (zoo model ``cifar10-branched16`` is M = 16)."""
    return BranchedResNet18(branches, tuple(widths), clamp=clamp)


def clamped_softmax_loss(f: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy between softmax(+-1 indicators) and softmax(f), f already clamped; mean over the batch."""
    return F.cross_entropy(f, indicator_targets(labels, f.shape[1]))
