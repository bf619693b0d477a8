"""Built-in branch-discovery strategies (a plugin of the core).

Tried in order, first non-empty result wins:
1. marked containers: summed branches (:class:`probekit.SummedBranches`, or any
   module marked with a ``probekit_branches`` attribute, see
   :func:`probekit.mark_branches`) and gated experts
   (:class:`probekit.MixtureOfExperts` or :func:`probekit.mark_experts`);
2. token-routed experts of transformers' MoE blocks (:mod:`probekit.models.routed`),
   one branch per expert, named ``<experts path>[e=<expert>]``;
3. grouped convolutions: every conv with ``groups > 1`` is one layer with one
   branch per group, named ``<conv path>[g=<group>]``; depthwise convs (one group
   per input channel) are left out, with a note (``--branches`` names them);
4. concatenated towers (Inception blocks, :mod:`probekit.models.towers`);
5. attention heads: of a transformers model, read at each attention block's output
   projection without swapping modules (:mod:`probekit.models.projected_heads`,
   kind ``projected-heads``); else each ``nn.MultiheadAttention`` and torchvision
   Swin attention is swapped for an exactly equivalent module that calls its output
   projection as a module (:mod:`probekit.models.heads`), read the same way. The
   heads plus the output bias are the attention's output.

A transformers model with routed experts gets its attention heads too (strategy
``routed-experts+attention-heads``): the experts of every MoE layer and the heads
of every attention layer.
"""

from __future__ import annotations

from torch import nn

from probekit.models.branched import BRANCHES_ATTR
from probekit.models.branches import BranchLayer, BranchSet, depthwise_note, is_depthwise, layer_name
from probekit.models.experts import EXPERTS_ATTR
from probekit.models.heads import attention_head_layers
from probekit.models.projected_heads import hf_head_layers
from probekit.models.routed import is_routed_experts
from probekit.models.towers import tower_layers
from probekit.hookspecs import hookimpl

STRATEGY_DESCRIPTIONS = (
    "summed-branch containers (probekit.SummedBranches or a `probekit_branches` attribute)",
    "gated experts (probekit.MixtureOfExperts or a `probekit_experts` attribute)",
    "token-routed experts (transformers MoE blocks)",
    "grouped convolutions (groups > 1)",
    "concatenated towers (Inception blocks)",
    "attention heads (transformers attention blocks, nn.MultiheadAttention, torchvision Swin attention)",
)

_CONV_GROUPS_ARG = {"conv1d": 6, "conv2d": 6, "conv3d": 6, "convolution": 8, "conv_transpose2d": 6}


def _child_path(path: str, child: str) -> str:
    return f"{path}.{child}" if path else child


def _entries(module: nn.Module, child: str) -> tuple[str, ...] | None:
    """The keys of ``module.<child>`` when it is a non-empty ModuleList or ModuleDict."""
    container = getattr(module, child, None)
    if not isinstance(container, (nn.ModuleList, nn.ModuleDict)) or len(container) == 0:
        return None
    return tuple(key for key, _ in container.named_children())


def marked_layers(model: nn.Module) -> list[BranchLayer]:
    """Layers of every marked summed-branch container and gated-experts layer in ``model``."""
    layers = []
    for path, module in model.named_modules():
        summed, gated = getattr(module, BRANCHES_ATTR, None), getattr(module, EXPERTS_ATTR, None)
        if isinstance(summed, str) and (keys := _entries(module, summed)):
            names = tuple(f"{_child_path(path, summed)}.{key}" for key in keys)
            layers.append(BranchLayer(layer_name(path), "sum", names, names, container=path))
        elif isinstance(gated, tuple) and len(gated) == 2 and (keys := _entries(module, gated[0])):
            names = tuple(f"{_child_path(path, gated[0])}.{key}" for key in keys)
            layers.append(BranchLayer(layer_name(path), "gated", names, names, container=path,
                                      gate=_child_path(path, gated[1])))
    return layers


def routed_layers(model: nn.Module) -> list[BranchLayer]:
    """One layer per token-routed experts module (see :mod:`probekit.models.routed`)."""
    layers = []
    for path, module in model.named_modules():
        if path and is_routed_experts(module):
            names = tuple(f"{path}[e={k}]" for k in range(module.num_experts))
            layers.append(BranchLayer(path, "routed", names, (path,), container=path.rpartition(".")[0]))
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
    grouped = [(path, conv_groups(module)) for path, module in model.named_modules() if not is_depthwise(module)]
    grouped += list(tapped.items())
    for path, groups in grouped:
        if groups > 1:
            names = tuple(f"{path}[g={g}]" for g in range(groups))
            layers.append(BranchLayer(layer_name(path), "grouped", names, (path,)))
    return layers


def _in_model_order(model: nn.Module, layers: list[BranchLayer]) -> list[BranchLayer]:
    """``layers`` sorted by where their container sits in the model (attention before the MoE of a block)."""
    order = {path: i for i, (path, _) in enumerate(model.named_modules())}
    return sorted(layers, key=lambda layer: order.get(layer.modules[0], len(order)))


@hookimpl
def probekit_discover_branches(model, config):
    for strategy, find in (("marked", marked_layers), ("routed-experts", routed_layers),
                           ("grouped-conv", grouped_conv_layers), ("towers", tower_layers),
                           ("attention-heads", lambda m: hf_head_layers(m) or attention_head_layers(m))):
        layers = find(model)
        if layers and strategy == "routed-experts" and (heads := hf_head_layers(model)):
            layers, strategy = _in_model_order(model, layers + heads), "routed-experts+attention-heads"
        if layers:
            if strategy == "marked":  # named by what was marked: summed, gated-experts, or both
                strategy = "+".join(sorted({"summed" if layer.kind == "sum" else "gated-experts" for layer in layers},
                                           reverse=True))
            return BranchSet(tuple(layers), strategy, depthwise_note(model))
    return None
