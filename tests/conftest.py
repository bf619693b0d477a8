"""Shared fixtures: tiny real models, the CLI run in-process, and the shared data folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from probekit.cli import main

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def cli(capsys):
    """Run ``probekit ARGS...`` in-process; return ``(exit code, stdout, stderr)``."""

    def run(*args: str):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def shared_data():
    """``../shared/data``, or a skip saying why when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent")
    return SHARED_DATA


class TinyGrouped(nn.Module):
    """A real little CNN with one grouped conv (4 groups): ``[N,3,8,8] -> [N,5]``."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.grouped(torch.relu(self.stem(x))))
        return self.head(x.mean((2, 3)))


@pytest.fixture
def tiny_grouped():
    torch.manual_seed(0)
    return TinyGrouped().eval()
