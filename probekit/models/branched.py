"""Explicit summed branches: ``f(x) = sum_k v_k(x) [+ R(x)]`` (paper Eq. 1).

Use :class:`SummedBranches` to build such a model, or mark a module of your own
with :func:`mark_branches` (or a class attribute ``probekit_branches``) so
branch discovery finds it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

BRANCHES_ATTR = "probekit_branches"


class SummedBranches(nn.Module):
    """Sum of M branch modules, plus an optional residual module ``R``.

    Each branch maps the same input to outputs of one shape; the container
    returns their sum (and ``residual(x)`` when given).
    """

    probekit_branches = "branches"

    def __init__(self, branches: Iterable[nn.Module], residual: nn.Module | None = None):
        super().__init__()
        self.branches = nn.ModuleList(branches)
        if len(self.branches) == 0:
            raise ValueError("SummedBranches needs at least one branch")
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for k, branch in enumerate(self.branches):  # written so that torch.jit.script accepts it
            if k > 0:
                out = out + branch(x)
        if self.residual is not None:
            out = out + self.residual(x)
        return out


def mark_branches(module: nn.Module, child: str = "branches") -> nn.Module:
    """Mark ``module`` as a summed-branch container whose branches are ``module.<child>``.

    ``module.<child>`` must be an ``nn.ModuleList`` or ``nn.ModuleDict``; each
    of its entries is one branch, named ``<path>.<child>.<key>``. Returns
    ``module`` so the call can wrap a constructor.
    """
    container = getattr(module, child, None)
    if not isinstance(container, (nn.ModuleList, nn.ModuleDict)):
        raise TypeError(f"{type(module).__name__}.{child} must be an nn.ModuleList or nn.ModuleDict")
    setattr(module, BRANCHES_ATTR, child)
    return module
