"""Built-in branch-discovery strategies (a plugin of the core).

Tried in order, first non-empty result wins:
1. summed-branch containers: :class:`probekit.SummedBranches`, or any module
   marked with a ``probekit_branches`` attribute (see :func:`probekit.mark_branches`);
2. grouped convolutions: every conv with ``groups > 1`` is one layer with one
   branch per group, named ``<conv path>[g=<group>]``.
"""

from __future__ import annotations

from torch import nn

from probekit.models.branched import BRANCHES_ATTR
from probekit.models.branches import BranchLayer, BranchSet, layer_name
from probekit.hookspecs import hookimpl

STRATEGY_DESCRIPTIONS = (
    "summed-branch containers (probekit.SummedBranches or a `probekit_branches` attribute)",
    "grouped convolutions (groups > 1)",
)

_CONV_GROUPS_ARG = {"conv1d": 6, "conv2d": 6, "conv3d": 6, "convolution": 8, "conv_transpose2d": 6}


def summed_layers(model: nn.Module) -> list[BranchLayer]:
    """Layers of every marked summed-branch container in ``model``."""
    layers = []
    for path, module in model.named_modules():
        child = getattr(module, BRANCHES_ATTR, None)
        if not isinstance(child, str):
            continue
        container = getattr(module, child, None)
        if not isinstance(container, (nn.ModuleList, nn.ModuleDict)) or len(container) == 0:
            continue
        prefix = f"{path}.{child}" if path else child
        names = tuple(f"{prefix}.{key}" for key, _ in container.named_children())
        layers.append(BranchLayer(layer_name(path), "sum", names, names, container=path))
    return layers


def conv_node_groups(node) -> int:
    """``groups`` of an FX node that calls an aten convolution; 0 for any other node."""
    if node.op != "call_function" or _conv_op_name(node.target) not in _CONV_GROUPS_ARG:
        return 0
    index = _CONV_GROUPS_ARG[_conv_op_name(node.target)]
    groups = node.args[index] if len(node.args) > index else node.kwargs.get("groups", 1)
    return groups if isinstance(groups, int) else 1


def conv_groups(module: nn.Module) -> int:
    """``groups`` of a conv module, also for graph-captured (torch.export) convs; 1 otherwise."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.groups
    if type(module).__name__ != "InterpreterModule":  # (a TorchScript submodule's .graph may raise)
        return 1
    graph = getattr(module, "graph", None)
    if graph is None:
        return 1
    groups = [g for g in map(conv_node_groups, graph.nodes) if g]
    return groups[0] if len(groups) == 1 else 1


def _conv_op_name(target) -> str:
    name = getattr(target, "__name__", str(target))
    return name.split(".")[0]


def grouped_conv_layers(model: nn.Module) -> list[BranchLayer]:
    """One layer per conv with ``groups > 1``; branch g is its g-th channel slice.

    Graph models made from TorchScript carry their tapped grouped convs in ``probekit_taps``.
    """
    layers = []
    tapped = getattr(model, "probekit_taps", {})
    grouped = [(path, conv_groups(module)) for path, module in model.named_modules()] + list(tapped.items())
    for path, groups in grouped:
        if groups > 1:
            names = tuple(f"{path}[g={g}]" for g in range(groups))
            layers.append(BranchLayer(layer_name(path), "grouped", names, (path,)))
    return layers


@hookimpl
def probekit_discover_branches(model, config):
    for strategy, find in (("summed", summed_layers), ("grouped-conv", grouped_conv_layers)):
        layers = find(model)
        if layers:
            return BranchSet(tuple(layers), strategy)
    return None
