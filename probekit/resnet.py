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

from .branched import SummedBranches

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

    def __init__(self, branches: int = 16, widths: tuple[int, ...] = WIDTHS, classes: int = 10, clamp: bool = True):
        super().__init__(SlimResNet18(tuple(widths), classes) for _ in range(branches))
        self.clamp = clamp
        self.register_buffer("mean", torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CIFAR10_STD).view(1, 3, 1, 1))

    def forward(self, x):
        f = super().forward((x - self.mean) / self.std)
        return f.clamp(-1.0, 1.0) if self.clamp else f


def branched_resnet18(branches: int = 16, widths: tuple[int, ...] = WIDTHS, clamp: bool = True) -> BranchedResNet18:
    """The ``branched-resnet18`` family (zoo model ``cifar10-branched16`` is M = 16)."""
    return BranchedResNet18(branches, tuple(widths), clamp=clamp)


def indicator_targets(labels: torch.Tensor, classes: int = 10) -> torch.Tensor:
    """The paper's target distribution: softmax of +1 for the true class and -1 elsewhere; ``[N] -> [N, classes]``."""
    signs = torch.full((labels.shape[0], classes), -1.0, device=labels.device)
    signs[torch.arange(labels.shape[0]), labels] = 1.0
    return signs.softmax(dim=1)


def clamped_softmax_loss(f: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy between softmax(+-1 indicators) and softmax(f), f already clamped; mean over the batch."""
    return F.cross_entropy(f, indicator_targets(labels, f.shape[1]))


class FusedBranchedResNet18(nn.Module):
    """The same function as :class:`BranchedResNet18`, computed as one network of grouped convolutions.

    Branch k owns channel slice k of every layer (``groups=M``); the first conv
    reads the shared input with ``groups=1``; the per-branch linear heads are
    one batched matmul. Build it from a loop model with :meth:`from_branched`.
    Kept for the speed comparison in ``benchmarks/resnet_fused.py`` and the
    equivalence test; the loop model is the one trained and bundled.
    """

    def __init__(self, branches: int = 16, widths: tuple[int, ...] = WIDTHS, classes: int = 10, clamp: bool = True):
        super().__init__()
        m = self.branches = branches
        self.clamp = clamp
        self.register_buffer("mean", torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CIFAR10_STD).view(1, 3, 1, 1))
        self.conv1 = nn.Conv2d(3, m * widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(m * widths[0])
        blocks, cin = [], widths[0]
        for i, cout in enumerate(widths):
            blocks += [_GroupedBlock(m, cin, cout, 1 if i == 0 else 2), _GroupedBlock(m, cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head_weight = nn.Parameter(torch.zeros(m, classes, widths[-1]))
        self.head_bias = nn.Parameter(torch.zeros(m, classes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1((x - self.mean) / self.std)))
        features = F.adaptive_avg_pool2d(self.blocks(out), 1).flatten(1).view(x.shape[0], self.branches, -1)
        f = (torch.einsum("nmd,mcd->nc", features, self.head_weight) + self.head_bias.sum(0))
        return f.clamp(-1.0, 1.0) if self.clamp else f

    @classmethod
    def from_branched(cls, model: BranchedResNet18) -> FusedBranchedResNet18:
        """A fused copy of ``model`` (weights and BatchNorm buffers concatenated branch by branch)."""
        first = model.branches[0]
        widths = (first.conv1.out_channels, *(stage[0].conv1.out_channels for stage in
                                                (first.layer2, first.layer3, first.layer4)))
        fused = cls(len(model.branches), widths, first.linear.out_features, model.clamp)
        stacked = {}
        for key in fused.state_dict():
            if key in ("mean", "std"):
                continue
            if key.startswith("head_"):
                name = "linear.weight" if key == "head_weight" else "linear.bias"
                stacked[key] = torch.stack([b.state_dict()[name] for b in model.branches])
                continue
            branch_key = _branch_key(key)
            values = [b.state_dict()[branch_key] for b in model.branches]
            stacked[key] = values[0] if key.endswith("num_batches_tracked") else torch.cat(values)
        fused.load_state_dict({**stacked, "mean": model.mean, "std": model.std})
        return fused


class _GroupedBlock(nn.Module):
    """M :class:`BasicBlock` s side by side as grouped convs: ``[N, M*cin, H, W] -> [N, M*cout, H/s, W/s]``."""

    def __init__(self, m: int, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(m * cin, m * cout, 3, stride, 1, bias=False, groups=m)
        self.bn1 = nn.BatchNorm2d(m * cout)
        self.conv2 = nn.Conv2d(m * cout, m * cout, 3, 1, 1, bias=False, groups=m)
        self.bn2 = nn.BatchNorm2d(m * cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(m * cin, m * cout, 1, stride, bias=False, groups=m),
                                          nn.BatchNorm2d(m * cout))

    forward = BasicBlock.forward


def _branch_key(fused_key: str) -> str:
    """``blocks.3.conv1.weight`` -> ``layer2.1.conv1.weight``: the same tensor in one branch."""
    if not fused_key.startswith("blocks."):
        return fused_key
    _, block, rest = fused_key.split(".", 2)
    stage, within = divmod(int(block), 2)
    return f"layer{stage + 1}.{within}.{rest}"
