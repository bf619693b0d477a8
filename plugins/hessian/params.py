"""Which parameter elements an analysis differentiates, and the branch each belongs to.

A selection is a tuple of :class:`ParamBlock` s: runs of a parameter
tensor's flattened elements owned by one branch. For summed branches a run is
a whole tensor inside the branch module; for a grouped conv or fused experts
one group's or expert's leading rows of the shared tensor; for an attention
head its rows of the query, key and value projections and its columns of the
output projection (strided runs, :func:`probekit.api.head_runs`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from probekit.api import BranchLayer, BranchSet, glob_regex, head_runs, ProbekitError


@dataclass(frozen=True)
class ParamBlock:
    """Elements ``start + r * stride + (0 : stop - start)`` for ``r < rows`` of parameter ``name`` (flattened),
    owned by ``branch`` of branch layer ``layer``; one contiguous run ``start:stop`` when ``rows`` is 1."""

    name: str
    branch: str
    layer: str
    start: int
    stop: int
    rows: int = 1
    stride: int = 0

    @property
    def size(self) -> int:
        return (self.stop - self.start) * self.rows

    def elements(self) -> np.ndarray:
        """``[size]`` the flat indices of the block's elements, in order."""
        run = np.arange(self.start, self.stop)
        return (run[None, :] + self.stride * np.arange(self.rows)[:, None]).ravel()

    def take(self, flat: torch.Tensor) -> torch.Tensor:
        """``[..., size]``: the block's elements of ``flat`` ``[..., numel]``."""
        if self.rows == 1:
            return flat[..., self.start:self.stop]
        return flat.index_select(-1, torch.as_tensor(self.elements(), device=flat.device))


def _owned_blocks(model: nn.Module, layer: BranchLayer, name: str, param: torch.Tensor) -> list[ParamBlock] | None:
    """The blocks of parameter ``name`` if it belongs to a branch of ``layer``, else None."""
    if layer.kind == "projected-heads":  # a head's rows of Q, K, V and columns of O
        runs = head_runs(model, layer, name)
        return None if runs is None else [ParamBlock(name, branch, layer.name, *run)
                                          for branch, head in zip(layer.branches, runs, strict=True) for run in head]
    if layer.kind in ("grouped", "routed"):  # a grouped conv's, or fused experts', leading rows by branch
        (owner,) = layer.modules
        if name.rpartition(".")[0] != owner:
            return None
        rows = param.numel() // len(layer.branches)
        return [ParamBlock(name, branch, layer.name, k * rows, (k + 1) * rows)
                for k, branch in enumerate(layer.branches)]
    paths = layer.branches if layer.kind == "concat" else layer.modules  # a tower's name is its module path
    for path, branch in zip(paths, layer.branches, strict=True):
        if name.startswith(f"{path}."):
            return [ParamBlock(name, branch, layer.name, 0, param.numel())]
    return None


def _first_layer_params(model: nn.Module, layer: BranchLayer) -> list[str]:
    """The parameters of each branch's first module that has any (the default selection); of attention heads,
    every parameter of the block that the heads do not share (their Q, K, V and O slices)."""
    if layer.kind == "projected-heads":
        return [name for name, _ in model.get_submodule(layer.container).named_parameters(prefix=layer.container)
                if _head_owned(model, layer, name)]
    if layer.kind in ("grouped", "routed"):
        return [name for name, _ in model.get_submodule(layer.modules[0]).named_parameters(prefix=layer.modules[0])]
    names = []
    modules = {path for path, _ in model.named_modules()}
    for path in (b for b in layer.branches if b in modules) if layer.kind == "concat" else layer.modules:
        for sub_path, sub in model.get_submodule(path).named_modules(prefix=path):
            own = list(sub.named_parameters(prefix=sub_path, recurse=False))
            if own:
                names += [name for name, _ in own]
                break
    return names


def _head_owned(model: nn.Module, layer: BranchLayer, name: str) -> bool:
    try:
        return head_runs(model, layer, name) is not None
    except ProbekitError:
        return False


def select_params(model: nn.Module, branchset: BranchSet, pattern: str | None = None) -> tuple[ParamBlock, ...]:
    """Blocks of the parameters matching ``pattern`` (a glob over dotted names, ``*`` within a segment,
    ``**`` across; several globs separated by commas), or by default the first layer of every branch of the first
    branch layer whose branches own parameters (attention heads only when no other kind does); in branch order."""
    params = dict(model.named_parameters())
    if pattern is None:  # the first branch layer whose branches own parameters, heads last
        layers = sorted(branchset.layers, key=lambda layer: layer.kind == "projected-heads")
        found = next(((layer, names) for layer in layers if (names := _first_layer_params(model, layer))), None)
        if found is None:
            raise ProbekitError(f"the branches of {branchset.layers[0].name!r} own no parameters to differentiate; "
                                "choose parameters of other branches with hessian.params=GLOB")
        layer, names = found
        layers = [layer]
    else:  # one glob, or several separated by commas
        regexes = [glob_regex(part.strip()) for part in pattern.split(",") if part.strip()]
        names = [name for name in params if any(r.fullmatch(name) for r in regexes)]
        layers = list(branchset.layers)
        if not names:
            raise ProbekitError(f"params={pattern!r} matches no parameter; names look like "
                                f"{', '.join(list(params)[:3])}")
    blocks = []
    for name in names:
        owned = next((b for layer in layers if (b := _owned_blocks(model, layer, name, params[name]))), None)
        if owned is None:
            raise ProbekitError(f"parameter {name} is not inside any branch ({branchset.strategy}); "
                                "choose parameters of branch modules")
        blocks += owned
    order = {branch: i for i, branch in enumerate(branchset.names)}
    return tuple(sorted(blocks, key=lambda b: order[b.branch]))  # stable: tensor order within a branch


def block_slices(blocks: tuple[ParamBlock, ...]) -> dict[str, slice]:
    """Each branch's rows of the selection (contiguous, since blocks are sorted by branch)."""
    slices, start = {}, 0
    for block in blocks:
        first = slices.get(block.branch, slice(start, start)).start
        start += block.size
        slices[block.branch] = slice(first, start)
    return slices


def param_coords(blocks: tuple[ParamBlock, ...], dim: str = "param") -> dict:
    """Coordinates on ``dim``: ``<dim>_branch``, ``<dim>_layer``, ``<dim>_name``, ``<dim>_element``."""
    branch, layer, name, element = [], [], [], []
    for block in blocks:
        branch += [block.branch] * block.size
        layer += [block.layer] * block.size
        name += [block.name] * block.size
        element.append(block.elements())
    total = sum(block.size for block in blocks)
    return {
        dim: (dim, np.arange(total)),
        f"{dim}_branch": (dim, np.array(branch, dtype=object)),
        f"{dim}_layer": (dim, np.array(layer, dtype=object)),
        f"{dim}_name": (dim, np.array(name, dtype=object)),
        f"{dim}_element": (dim, np.concatenate(element) if element else np.zeros(0, np.int64)),
    }
