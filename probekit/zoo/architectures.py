"""Architectures of the bundled models."""

from __future__ import annotations

from torch import nn

from probekit.models.branched import SummedBranches
from probekit.models.experts import MixtureOfExperts, TopKGate

LEAKY_SLOPE = 0.01  # torch's LeakyReLU default


class Perceptron(nn.Module):
    """One scalar branch of the toy examples: ``v(x) = LeakyReLU(w x + b)``; ``[N,1] -> [N,1]``."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(1, 1)
        self.act = nn.LeakyReLU(LEAKY_SLOPE)

    def forward(self, x):
        return self.act(self.linear(x))


def branched_perceptron(branches: int) -> SummedBranches:
    """The paper's toy network ``f(x) = sum_k LeakyReLU(w_k x + b_k)`` with M branches."""
    return SummedBranches(Perceptron() for _ in range(branches))


class DigitsBranch(nn.Module):
    """A small CNN branch for 8x8 digits: ``[N,1,8,8] -> [N,10]`` logits."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(2 * width * 4 * 4, 10)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def digits_branched(branches: int = 8, width: int = 8) -> SummedBranches:
    """``digits-branched8``: M summed :class:`DigitsBranch` es."""
    return SummedBranches(DigitsBranch(width) for _ in range(branches))


def digits_moe(experts: int = 8, k: int = 2, width: int = 8) -> MixtureOfExperts:
    """``digits-moe8``: M :class:`DigitsBranch` experts under a linear top-k router on the 64 pixels."""
    return MixtureOfExperts((DigitsBranch(width) for _ in range(experts)), TopKGate(64, experts, k))
