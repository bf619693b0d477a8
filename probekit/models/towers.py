"""Concatenated towers: blocks whose output is ``torch.cat([t_1(x), ..., t_K(x)], dim=1)`` (Inception).

Each tower is a branch and the block is its layer. A tower's response is the block's output with every other
tower's channels set to zero, i.e. its own slice placed in the concatenated space, so the K responses sum to
the block output exactly. Blocks are found by tracing each custom module with ``torch.fx``; a tower is named by
the first child module on its path (``inception3a.branch2``), or by the function that makes it
(``Mixed_6a.max_pool2d``) when it has no module. A concatenation nested in the final one (Inception-v3's
``InceptionE``) contributes its own inputs as towers.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from probekit.models.branches import BranchLayer, layer_name

UNKNOWN = -1  # a tower whose channel count is the block's output minus the others'


def tower_layers(model: nn.Module) -> list[BranchLayer]:
    """One ``concat`` layer per block of ``model`` whose output concatenates two or more towers."""
    layers = []
    for path, module in model.named_modules():
        towers = _towers(module)
        if towers:
            names = _unique([name for name, _ in towers])
            layers.append(BranchLayer(layer_name(path), "concat", tuple(f"{path}.{n}" if path else n for n in names),
                                      (path,), channels=tuple(c for _, c in towers)))
    return layers


def _is_candidate(module: nn.Module) -> bool:
    """A module of the user's (or torchvision's) own class with at least two children."""
    return (not type(module).__module__.startswith("torch.")
            and sum(1 for _ in module.children()) >= 2)


def _towers(module: nn.Module) -> list[tuple[str, int]] | None:
    """``[(tower name, channels or UNKNOWN)]`` when ``module`` returns a channel concatenation of towers."""
    if not _is_candidate(module):
        return None
    try:
        graph = fx.symbolic_trace(module).graph
    except Exception:  # not traceable (data-dependent control flow, ...): not a tower block we can read
        return None
    (output,) = [node for node in graph.nodes if node.op == "output"]
    inputs = _cat_inputs(output.args[0])
    if inputs is None:
        return None
    towers = [(_tower_name(node), _channels(node, module)) for node in inputs]
    named = sum(1 for node in inputs if _module_on_path(node) is not None)
    if named < 2 or sum(c == UNKNOWN for _, c in towers) > 1:
        return None
    return towers


def _cat_inputs(node) -> list[fx.Node] | None:
    """The tensors concatenated along dim 1 by ``node`` (nested concatenations flattened), else ``None``."""
    if not isinstance(node, fx.Node) or node.op != "call_function" or node.target is not torch.cat:
        return None
    tensors = node.args[0]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    if dim != 1 or not isinstance(tensors, (list, tuple)) or len(tensors) < 2:
        return None
    flat = []
    for tensor in tensors:
        flat += _cat_inputs(tensor) or [tensor]
    return flat if all(isinstance(t, fx.Node) for t in flat) else None


def _chain(node: fx.Node):
    """``node`` and the nodes it was computed from, following each one's first tensor argument."""
    while isinstance(node, fx.Node):
        yield node
        if node.op == "call_module" or node.op == "placeholder":
            return
        node = node.args[0] if node.args else None


def _module_on_path(node: fx.Node) -> str | None:
    return next((n.target for n in _chain(node) if n.op == "call_module"), None)


def _tower_name(node: fx.Node) -> str:
    """The first child module on the tower's path, else the function applied to the block's input."""
    target = _module_on_path(node)
    if target is not None:
        return target.split(".")[0]
    chain = list(_chain(node))
    first = chain[-2] if len(chain) > 1 else node  # the node right after the block's input
    return getattr(first.target, "__name__", str(first.target))


def _channels(node: fx.Node, module: nn.Module) -> int:
    """The output channels of a tower, from the last module on its path (BatchNorm or conv), else UNKNOWN."""
    target = _module_on_path(node)
    if target is None:
        return UNKNOWN
    last = module.get_submodule(target)
    for attribute in ("num_features", "out_channels"):
        if isinstance(getattr(last, attribute, None), int):
            return getattr(last, attribute)
    return UNKNOWN


def _unique(names: list[str]) -> list[str]:
    """``names`` with repeats numbered (``max_pool2d``, ``max_pool2d_1``)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        out.append(name if name not in seen else f"{name}_{seen[name]}")
        seen[name] = seen.get(name, 0) + 1
    return out
