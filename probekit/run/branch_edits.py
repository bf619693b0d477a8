"""Editing branches inside a forward pass: ablations, patches and scalar gates, for every kind of branch.

``edit_branches(model, layers, edit)`` hooks the model so that, in each forward pass inside the ``with`` block,
the *part* of each branch of ``layers`` passes through ``edit(layer, k, part)``, which returns the part to use
instead (the same tensor to keep it). A part is what the branch adds to its layer, in the layer's own space, with
the samples first:

* summed, named and gated layers: branch k's module output (for gated experts: the expert's output before
  its gate, which the layer then gates);
* grouped convs and concatenated towers: the output channels of group or tower k;
* attention heads (``projected-heads``): head k's slice ``z_k`` of the output projection's input
  (``[N, T, d]``), whose contribution is linear in it, so zeroing ``z_k`` removes the head exactly;
* token-routed experts: expert k's weighted output on each sample's tokens (``[N, S, H]``, recomputed by the
  experts module's own forward), which the layer then sums.

So zero-, mean- and resample-ablation, activation patching and a scalar gate per branch (``part * xi``) are each
one ``edit`` function, on every kind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from probekit.errors import ProbekitError
from probekit.models.branches import BranchLayer
from probekit.models.routed import routed_contributions
from probekit.run.hooks import forward_hooks

Edit = Callable[[BranchLayer, int, torch.Tensor], torch.Tensor]


def _rebuilt(layer: BranchLayer, parts: Sequence[torch.Tensor], edit: Edit, dim: int) -> torch.Tensor:
    return torch.cat([edit(layer, k, part) for k, part in enumerate(parts)], dim=dim)


def _module_hook(layer: BranchLayer, k: int, edit: Edit):
    def hook(module, args, output):
        if not isinstance(output, torch.Tensor):
            raise ProbekitError(f"branch module {layer.modules[k]!r} returned {type(output).__name__}, not a tensor")
        return edit(layer, k, output)

    return hook


def _channels_hook(layer: BranchLayer, edit: Edit):
    def hook(module, args, output):
        if layer.kind == "grouped":
            parts = output.chunk(len(layer.branches), dim=1)
        else:
            parts = [output[:, s] for s in layer.tower_slices(output.shape[1])]
        return _rebuilt(layer, parts, edit, 1)

    return hook


def _heads_hook(layer: BranchLayer, edit: Edit):
    def hook(module, args):
        return (_rebuilt(layer, args[0].chunk(len(layer.branches), dim=-1), edit, -1), *args[1:])

    return hook


def _routed_hooks(layer: BranchLayer, edit: Edit) -> tuple[Callable, Callable]:
    samples = {}

    def count(module, args):
        samples["n"] = args[0].shape[0]

    def hook(module, args, output):
        contributions, _ = routed_contributions(module, *args[:3])  # [T, K, H]
        n, (tokens, k_experts, hidden) = samples["n"], contributions.shape
        per_sample = contributions.reshape(n, tokens // n, k_experts, hidden)
        edited = [edit(layer, k, per_sample[:, :, k]) for k in range(k_experts)]
        return torch.stack(edited).sum(0).reshape(tokens, hidden).to(output.dtype)

    return count, hook


@contextmanager
def edit_branches(model: nn.Module, layers: Sequence[BranchLayer], edit: Edit) -> Iterator[None]:
    """Pass every branch part of ``layers`` through ``edit(layer, k, part)`` in each forward pass of ``model``
    inside the block (see the module docstring); the hooks are always removed on exit."""
    after, before = [], []
    tapped = getattr(model, "probekit_taps", {})
    for layer in layers:
        if any(path in tapped for path in layer.modules):
            raise ProbekitError(f"layer {layer.name!r}: branches of a graph-captured model cannot be edited")
        if layer.kind in ("sum", "glob", "gated"):
            after += [(path, _module_hook(layer, k, edit)) for k, path in enumerate(layer.modules)]
        elif layer.kind in ("grouped", "concat"):
            after.append((layer.modules[0], _channels_hook(layer, edit)))
        elif layer.kind == "projected-heads":
            before.append((layer.modules[0], _heads_hook(layer, edit)))
        elif layer.kind == "routed":
            count, hook = _routed_hooks(layer, edit)
            before.append((layer.container, count))
            after.append((layer.modules[0], hook))
        else:
            raise ProbekitError(f"layer {layer.name!r}: branches of kind {layer.kind!r} cannot be edited")
    with forward_hooks(model, after, before):
        yield
