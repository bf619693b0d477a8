"""Token-routed experts of real libraries: transformers' sparse MoE blocks (Mixtral, Qwen-MoE, ...).

Such a block has a ``gate`` router and a fused ``experts`` module called as
``experts(hidden_states [T, H], top_k_index [T, k], top_k_weights [T, k])``, which runs each expert on the
tokens routed to it and sums the weighted outputs. Each expert is a branch (named ``<experts path>[e=<k>]``);
its response to a sample is its gated contribution to every token, zero where it was not routed, and the
gate value of a sample is the expert's routing weight averaged over the sample's tokens.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

ROUTED_ARGS = ("hidden_states", "top_k_index", "top_k_weights")


def is_routed_experts(module: nn.Module) -> bool:
    """Whether ``module`` is a fused experts module called with a routing (see the module docstring)."""
    if not isinstance(getattr(module, "num_experts", None), int):
        return False
    try:
        parameters = tuple(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return False
    return parameters[:3] == ROUTED_ARGS


def routed_contributions(experts: nn.Module, hidden: torch.Tensor, index: torch.Tensor,
                         weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(contributions [T, K, H], gates [T, K])``: each expert's weighted output per token, by the module's own
    forward on the tokens routed to that expert alone (so any of transformers' experts implementations gives it:
    no "no expert" index is passed, which the fused grouped kernels do not skip)."""
    k_experts = experts.num_experts
    gates = hidden.new_zeros(hidden.shape[0], k_experts).scatter_add(1, index, weights.to(hidden.dtype))
    contributions = hidden.new_zeros(hidden.shape[0], k_experts, hidden.shape[-1])
    for k in range(k_experts):
        rows, slots = torch.where(index == k)  # a token lists an expert at most once
        if len(rows):
            contributions[rows, k] = experts.forward(hidden[rows], index[rows, slots, None],
                                                     weights[rows, slots, None]).to(hidden.dtype)
    return contributions, gates


def every_expert(experts: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``[T, K, H]``: every expert's ungated output on every token (each routed alone, with weight 1), by the
    module's own forward; K times the cost of routing each token to one expert."""
    out = hidden.new_empty(hidden.shape[0], experts.num_experts, hidden.shape[-1])
    ones = hidden.new_ones(hidden.shape[0], 1)
    for k in range(experts.num_experts):
        index = torch.full((hidden.shape[0], 1), k, dtype=torch.long, device=hidden.device)
        out[:, k] = experts.forward(hidden, index, ones).to(hidden.dtype)
    return out


def per_sample(contributions: torch.Tensor, gates: torch.Tensor, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows ``[T, K, H]`` and ``[T, K]`` of ``samples`` sequences -> ``[N, K, S*H]`` responses and
    ``[N, K]`` gate values (the mean over each sample's tokens)."""
    tokens, k_experts, hidden = contributions.shape
    responses = contributions.reshape(samples, tokens // samples, k_experts, hidden).transpose(1, 2)
    return responses.flatten(2), gates.reshape(samples, -1, k_experts).mean(1)
