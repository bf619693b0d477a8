"""Convolution kernels of a branched model, one row per output channel, labelled by branch.

For summed (or glob) branches, a *layer* is a conv at the same path inside
every branch module (``conv1``, ``layer1.0.conv2``): its kernels are the
output channels of each branch's copy. For a grouped conv, the layer is the
conv itself and output channel ``o`` belongs to group ``o // (out / groups)``.
For concatenated towers (Inception), a layer is every conv of a block's
towers with one kernel shape ``C_in x k x k`` that at least two towers have
(``inception3a/192x1x1``: the 1x1 convs reading the block input), labelled
by tower.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from probekit.api import BranchLayer, BranchSet, glob_regex, ProbekitError

NORMALISATIONS = ("none", "l2", "zero-mean-l2")


@dataclass(frozen=True)
class LayerKernels:
    """The kernels of one layer: ``weights`` ``[n, C_in/groups, *kernel_size]`` (parameter units),
    with ``branch`` (name) and ``out_channel`` (index within the branch's conv, or the grouped conv) per kernel."""

    layer: str
    weights: np.ndarray
    branch: np.ndarray
    out_channel: np.ndarray

    @property
    def flat(self) -> np.ndarray:
        """``[n, C_in/groups * prod(kernel_size)]``."""
        return self.weights.reshape(len(self.weights), -1)


def _is_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd) and not module.transposed


def _weights(conv: nn.Module) -> np.ndarray:
    return conv.weight.detach().cpu().double().numpy()


def _grouped(model: nn.Module, layer: BranchLayer) -> LayerKernels:
    weights = _weights(model.get_submodule(layer.modules[0]))
    per_group = len(weights) // len(layer.branches)
    channels = np.arange(len(weights))
    branch = np.array(layer.branches, dtype=object)[channels // per_group]
    return LayerKernels(layer.name, weights, branch, channels)


def _summed(model: nn.Module, layer: BranchLayer, prefix: str) -> list[LayerKernels]:
    """One :class:`LayerKernels` per conv path present, with one weight shape, in every branch."""
    convs = [{path: m for path, m in model.get_submodule(root).named_modules() if _is_conv(m)}
             for root in layer.modules]
    out = []
    for path in convs[0]:
        copies = [c.get(path) for c in convs]
        if any(c is None for c in copies) or len({tuple(c.weight.shape) for c in copies}) != 1:
            continue
        weights = [_weights(c) for c in copies]
        branch = np.concatenate([[name] * len(w) for name, w in zip(layer.branches, weights, strict=True)])
        channels = np.concatenate([np.arange(len(w)) for w in weights])
        out.append(LayerKernels(prefix + (path or layer.name), np.concatenate(weights), branch.astype(object),
                                channels))
    return out


def _towers(model: nn.Module, layer: BranchLayer) -> list[LayerKernels]:
    """One :class:`LayerKernels` per kernel shape shared by the convs of at least two towers of a block."""
    paths = {path for path, _ in model.named_modules()}
    by_shape: dict[tuple, list[tuple[str, np.ndarray]]] = {}
    for tower in (t for t in layer.branches if t in paths):  # towers made by a function have no kernels
        for conv in (m for m in model.get_submodule(tower).modules() if _is_conv(m)):
            weights = _weights(conv)
            by_shape.setdefault(weights.shape[1:], []).append((tower, weights))
    out = []
    for shape, found in by_shape.items():
        if len({tower for tower, _ in found}) < 2:
            continue
        branch = np.concatenate([[tower] * len(w) for tower, w in found]).astype(object)
        channels = np.concatenate([np.arange(len(w)) for _, w in found])
        name = f"{layer.name}/{'x'.join(map(str, shape))}"
        out.append(LayerKernels(name, np.concatenate([w for _, w in found]), branch, channels))
    return out


def collect_kernels(model: nn.Module, branchset: BranchSet, pattern: str | None = None) -> list[LayerKernels]:
    """Every conv layer shared by all branches of a branch layer (or each grouped conv), in model order.

    ``pattern`` is a glob over the layer names (the path inside a branch, e.g. ``layer1.*.conv*``, or
    a grouped conv's module path); ``*`` stays within one dotted segment, ``**`` spans any.
    """
    prefix_needed = sum(layer.kind not in ("grouped", "concat") for layer in branchset.layers) > 1
    layers: list[LayerKernels] = []
    for layer in branchset.layers:
        if layer.kind == "grouped":
            layers.append(_grouped(model, layer))
        elif layer.kind == "concat":
            layers += _towers(model, layer)
        elif layer.kind != "routed":
            layers += _summed(model, layer, f"{layer.name}/" if prefix_needed else "")
    if not layers:
        raise ProbekitError(f"no convolution is shared by all branches ({branchset.strategy} branches); "
                            "kernels needs conv layers inside the branches")
    if pattern:
        regex = glob_regex(pattern)
        chosen = [k for k in layers if regex.fullmatch(k.layer)]
        if not chosen:
            raise ProbekitError(f"kernels.layers={pattern!r} matches no conv layer; the layers are "
                                f"{', '.join(k.layer for k in layers[:6])}{', ...' if len(layers) > 6 else ''}")
        layers = chosen
    return layers


def normalise(flat: np.ndarray, how: str) -> np.ndarray:
    """Rows of ``flat`` ``[n, d]`` as they are (``none``), scaled to unit L2 norm (``l2``), or made zero-mean
    and then unit norm (``zero-mean-l2``). All-zero rows stay zero."""
    if how not in NORMALISATIONS:
        raise ProbekitError(f"kernels.normalise must be one of {', '.join(NORMALISATIONS)}, not {how!r}")
    if how == "none":
        return flat
    rows = flat - flat.mean(axis=1, keepdims=True) if how == "zero-mean-l2" else flat
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)
