"""Attention heads of transformers models, read at the output projection, without swapping any module.

The input of an attention block's output projection (``o_proj``; GPT-2's ``c_proj``; BERT's ``output.dense``)
is the concatenation of the heads' outputs ``[N, T, H * d]``, so head h's contribution to the attention output is
its slice times its columns of the projection, ``z_h W_O[:, h]^T``; the heads plus the projection's bias are the
projection's output exactly. One forward hook on the projection computes every head's contribution with one
batched product, about the projection's own cost. Grouped-query attention shares keys and values between heads
but still concatenates H head outputs, so it needs nothing more.
"""

from __future__ import annotations

import torch
from torch import nn

from probekit.errors import ProbekitError
from probekit.models.branches import BranchLayer, layer_name

PROJECTIONS = ("o_proj", "c_proj", "out_proj", "output.dense", "dense")


def projection_weight(projection: nn.Module) -> torch.Tensor:
    """``[E_out, E_in]``: an ``nn.Linear`` weight, or the transpose of GPT-2's ``Conv1D`` weight ``[E_in, E_out]``."""
    if isinstance(projection, nn.Linear):
        return projection.weight
    return projection.weight.T


def head_contributions(projection: nn.Module, concatenated: torch.Tensor, heads: int) -> torch.Tensor:
    """``[N, H, T * E]``: each head's contribution to the projection's output, from its input ``[N, T, H * d]``
    (or ``[N, ..., H * d]``, the token axes flattened in order)."""
    weight = projection_weight(projection)
    concatenated = concatenated.flatten(1, -2)
    n, t, width = concatenated.shape
    per_head = weight.reshape(weight.shape[0], heads, width // heads)  # [E, H, d]
    contributions = torch.einsum("nthd,ehd->nhte", concatenated.reshape(n, t, heads, width // heads), per_head)
    return contributions.flatten(2)


def head_runs(model: nn.Module, layer: BranchLayer, name: str) -> list[list[tuple[int, int, int, int]]] | None:
    """Which elements of parameter ``name`` belong to each head of the ``projected-heads`` layer: per head, runs
    ``(start, stop, rows, stride)`` of the flattened tensor (``rows`` runs of ``stop - start`` elements, ``stride``
    apart). The output projection's weight gives each head its columns; an input projection (``nn.Linear`` or
    GPT-2's ``Conv1D`` inside the block, or ``nn.MultiheadAttention``'s own ``in_proj`` tensors) its rows of each
    of its query, key and value parts. ``None``: the parameter is not in the block. Raises for one the heads share
    (the output bias, grouped-query keys and values, norms)."""
    owner, _, leaf = name.rpartition(".")
    if not layer.container or not (owner == layer.container or owner.startswith(f"{layer.container}.")):
        return None
    module, projection = model.get_submodule(owner), model.get_submodule(layer.modules[0])
    param, heads = getattr(module, leaf), len(layer.branches)
    width = projection_weight(projection).shape[1]  # H * d
    d = width // heads
    shared = f"parameter {name} is shared by the heads of {layer.name}"
    if owner == layer.modules[0]:
        if leaf != "weight":
            raise ProbekitError(f"{shared} (the output projection's bias); select its weight")
        if isinstance(projection, nn.Linear):  # [E, H d]: head h's columns
            return [[(h * d, (h + 1) * d, param.shape[0], width)] for h in range(heads)]
        return [[(h * d * param.shape[1], (h + 1) * d * param.shape[1], 1, 0)] for h in range(heads)]  # Conv1D rows
    conv1d = type(module).__name__ == "Conv1D"
    if not (isinstance(module, nn.Linear) or conv1d or owner == layer.container):
        raise ProbekitError(f"{shared} ({type(module).__name__} mixes them); select the projections' weights")
    axis = 1 if conv1d and param.dim() == 2 else 0  # Conv1D weights are [in, out]
    size = param.shape[axis]
    if size % width:
        raise ProbekitError(f"{shared}: its {size} outputs are not whole sets of {heads} heads of {d} (grouped-query "
                            "keys and values serve several heads); select the query and output projections")
    if axis == 0:
        row = param.numel() // size
        return [[((c * width + h * d) * row, (c * width + (h + 1) * d) * row, 1, 0) for c in range(size // width)]
                for h in range(heads)]
    return [[(c * width + h * d, c * width + (h + 1) * d, param.shape[0], size) for c in range(size // width)]
            for h in range(heads)]


def _projection_of(module: nn.Module) -> tuple[str, nn.Module] | None:
    for name in PROJECTIONS:
        try:
            child = module.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(child, nn.Linear) or type(child).__name__ == "Conv1D":
            return name, child
    return None


def hf_head_layers(model: nn.Module) -> list[BranchLayer]:
    """One ``projected-heads`` layer per attention block of a transformers model (one whose ``config`` gives
    ``num_attention_heads``), branch h named ``<block>.heads.<h>``; ``[]`` for other models."""
    heads = getattr(getattr(model, "config", None), "num_attention_heads", None)
    if not isinstance(heads, int) or heads < 1:
        return []
    layers = []
    for path, module in model.named_modules():
        if not (path and type(module).__name__.endswith("Attention")):
            continue
        found = _projection_of(module)
        if found is None or projection_weight(found[1]).shape[1] % heads:
            continue
        projection = f"{path}.{found[0]}"
        names = tuple(f"{path}.heads.{h}" for h in range(heads))
        layers.append(BranchLayer(layer_name(path), "projected-heads", names, (projection,), container=path))
    return layers
