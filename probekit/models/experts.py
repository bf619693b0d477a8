"""Gated experts: ``f(x) = sum_k g_k(x) e_k(x)`` with a learnt, often sparse gate ``g``.

A branch of a gated layer is one expert, and its response is the *gated* contribution ``g_k(x) e_k(x)``, so
the responses of a layer sum to its output. The gate values ``g(x)`` (``[N, K]``, zero for experts the
router skipped) are recorded per sample, which gives routing statistics.

Build such a layer with :class:`MixtureOfExperts` and :class:`TopKGate`, or mark a module of your own with
:func:`mark_experts`: its gate child must return the dense gate values ``[N, K]``, and its experts child
(an ``nn.ModuleList``) the ungated expert outputs.
"""

from __future__ import annotations

import torch
from torch import nn

EXPERTS_ATTR = "probekit_experts"  # (experts child, gate child) of a marked gated layer


class TopKGate(nn.Module):
    """A linear router with top-k routing: ``[N, D] -> [N, K]`` dense gate values.

    The softmax of the router's logits is kept on the ``k`` largest experts and renormalised to sum to 1;
    every other expert gets 0.
    """

    def __init__(self, features: int, experts: int, k: int):
        super().__init__()
        if not 1 <= k <= experts:
            raise ValueError(f"top-k routing needs 1 <= k <= {experts}, not {k}")
        self.router = nn.Linear(features, experts)
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probabilities = self.router(x.flatten(1)).softmax(dim=1)
        top, index = probabilities.topk(self.k, dim=1)
        return torch.zeros_like(probabilities).scatter(1, index, top / top.sum(dim=1, keepdim=True))


class MixtureOfExperts(nn.Module):
    """``sum_k gate(x)_k * experts[k](x)``; every expert runs on every sample (small models; exact hooks)."""

    probekit_experts = ("experts", "gate")

    def __init__(self, experts, gate: nn.Module):
        super().__init__()
        self.experts = nn.ModuleList(experts)
        self.gate = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gate(x)  # [N, K]
        out = None
        for k, expert in enumerate(self.experts):
            y = expert(x)
            term = g[:, k].reshape(-1, *[1] * (y.dim() - 1)) * y
            out = term if out is None else out + term
        return out


def mark_experts(module: nn.Module, experts: str = "experts", gate: str = "gate") -> nn.Module:
    """Mark ``module`` as a gated layer ``sum_k module.<gate>(x)[:, k] * module.<experts>[k](x)``.

    ``module.<experts>`` must be an ``nn.ModuleList`` or ``nn.ModuleDict`` (its entries are the branches) and
    ``module.<gate>`` (a dotted path below ``module``) a module returning the dense gate values ``[N, K]``.
    Returns ``module``.
    """
    container = getattr(module, experts, None)
    if not isinstance(container, (nn.ModuleList, nn.ModuleDict)):
        raise TypeError(f"{type(module).__name__}.{experts} must be an nn.ModuleList or nn.ModuleDict")
    try:
        module.get_submodule(gate)
    except AttributeError:
        raise TypeError(f"{type(module).__name__}.{gate} must be a module returning the gate values [N, K]") from None
    setattr(module, EXPERTS_ATTR, (experts, gate))
    return module
