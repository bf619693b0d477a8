"""Benchmark-only: :class:`FusedBranchedResNet18`, the zoo's ``branched-resnet18`` computed as one network of grouped
convolutions (``benchmarks/resnet_fused.py`` times it; ``tests/test_resnet.py`` checks the equivalence)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from probekit.zoo.resnet import CIFAR10_MEAN, CIFAR10_STD, WIDTHS, BasicBlock, BranchedResNet18


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
