"""Branch sets: which module outputs are branches, and how to read them.

A :class:`BranchSet` is a tuple of :class:`BranchLayer` s. Each layer is a
group of sibling branches whose responses live in the same space (the M
branches of one summed container, or the G groups of one grouped conv), so
per-layer statistics such as "largest branch" or ``F F^T`` are well defined.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from probekit.errors import ProbekitError

ROOT_LAYER = "model"
LayerKind = Literal["sum", "grouped", "glob", "gated", "routed", "concat", "projected-heads"]


@dataclass(frozen=True)
class BranchLayer:
    """Sibling branches read from one place in the model.

    ``kind='sum'`` or ``'glob'``: ``modules[k]`` is branch k's module path and
    its output is branch k's response. ``kind='grouped'``: ``modules`` holds
    one grouped conv whose output channels split into ``len(branches)``
    equal, contiguous slices, one per group. ``kind='gated'``: ``modules[k]``
    is expert k and ``gate`` the module returning the gate values ``[N, K]``;
    the response is ``g_k e_k``. ``kind='routed'``: ``modules`` holds one
    fused, token-routed experts module (transformers' MoE blocks; see
    :mod:`probekit.models.routed`). ``kind='concat'``: ``modules`` holds one
    block whose output concatenates its towers along channels, ``channels[k]``
    wide (-1: the rest); tower k's response is the block output with every
    other tower's channels zeroed, so the responses sum to the output.
    ``kind='projected-heads'``: ``modules`` holds the output projection of an
    attention block (transformers', or a swapped ``nn.MultiheadAttention`` or
    Swin attention, :mod:`probekit.models.heads`), ``container`` the block;
    head k's response is its slice of the projection's input times its
    columns (see :mod:`probekit.models.projected_heads`).
    """

    name: str
    kind: LayerKind
    branches: tuple[str, ...]
    modules: tuple[str, ...]
    container: str | None = None  # kinds 'sum', 'gated', 'routed', 'projected-heads': the module that sums them
    gate: str | None = None  # kind 'gated': the module path of the gate
    channels: tuple[int, ...] = ()  # kind 'concat': each tower's channel count, -1 for the one left to infer

    @property
    def gated(self) -> bool:
        """Whether the layer records gate values (mixtures of experts)."""
        return self.kind in ("gated", "routed")

    def stack(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        """Turn the hooked outputs into responses of shape ``[N, K, D]`` (kinds other than gated and routed)."""
        if self.kind == "grouped":
            (out,) = outputs
            return out.reshape(out.shape[0], len(self.branches), -1)
        if self.kind == "concat":
            (out,) = outputs
            return self._towers(out)
        shapes = {tuple(o.shape) for o in outputs}
        if len(shapes) != 1:
            raise ProbekitError(
                f"branches of layer {self.name!r} return different shapes {sorted(shapes)}; "
                "branches of one layer must have outputs of one shape"
            )
        return torch.stack(outputs, dim=1).flatten(2)

    def tower_slices(self, total: int) -> list[slice]:
        """Each tower's channel slice of a concatenated output with ``total`` channels."""
        known = sum(c for c in self.channels if c >= 0)
        sizes = [c if c >= 0 else total - known for c in self.channels]
        if sum(sizes) != total or min(sizes) <= 0:
            raise ProbekitError(f"the towers of {self.name!r} have {self.channels} channels but the block outputs "
                                f"{total}")
        starts = [sum(sizes[:k]) for k in range(len(sizes))]
        return [slice(start, start + size) for start, size in zip(starts, sizes, strict=True)]

    def _towers(self, out: torch.Tensor) -> torch.Tensor:
        """``[N, C, ...]`` block output -> ``[N, K, C * ...]``, tower k keeping only its own channels."""
        towers = out.new_zeros(out.shape[0], len(self.branches), *out.shape[1:])
        for k, channels in enumerate(self.tower_slices(out.shape[1])):
            towers[:, k, channels] = out[:, channels]
        return towers.flatten(2)


@dataclass(frozen=True)
class BranchSet:
    """All branch layers of a model and the strategy that found them."""

    layers: tuple[BranchLayer, ...]
    strategy: str
    note: str = ""  # what discovery left out for the user (depthwise convs), for the run's note

    def __post_init__(self):
        names = [b for layer in self.layers for b in layer.branches]
        if len(set(names)) != len(names):
            raise ProbekitError(f"branch names are not unique in the {self.strategy} branch set")

    @property
    def names(self) -> list[str]:
        """Every branch name, layer by layer (the ``branch`` coordinate)."""
        return [b for layer in self.layers for b in layer.branches]

    @property
    def layer_of_branch(self) -> list[str]:
        """The layer name of each branch, aligned with :attr:`names`."""
        return [layer.name for layer in self.layers for _ in layer.branches]

    @property
    def group_of_branch(self) -> list[int]:
        """Each branch's index within its layer, aligned with :attr:`names`."""
        return [k for layer in self.layers for k in range(len(layer.branches))]

    def layer_slices(self) -> list[tuple[BranchLayer, slice]]:
        """Each layer with the slice of its branches along the ``branch`` axis."""
        out, start = [], 0
        for layer in self.layers:
            out.append((layer, slice(start, start + len(layer.branches))))
            start += len(layer.branches)
        return out

    def __len__(self) -> int:
        return sum(len(layer.branches) for layer in self.layers)


@dataclass(frozen=True)
class DiscoveryConfig:
    """What the user asked of discovery: ``pattern`` is ``--branches GLOB``."""

    pattern: str | None = None


def is_depthwise(module: nn.Module) -> bool:
    """A depthwise conv (one group per input channel, as in MobileNet and ConvNeXt): not branches by default."""
    return isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1 and module.groups == module.in_channels


def depthwise_note(model: nn.Module) -> str:
    """The note on the depthwise convs discovery leaves out (empty when there are none)."""
    count = sum(is_depthwise(m) for m in model.modules())
    if not count:
        return ""
    return (f"{count} depthwise conv{'s' if count > 1 else ''} (one group per channel) left out as branches; name "
            "them with --branches GLOB to probe them")


def layer_name(path: str) -> str:
    """A module path as a layer name (the root module is called ``model``)."""
    return path or ROOT_LAYER


def glob_regex(pattern: str) -> re.Pattern:
    """A module-path glob as a regex: ``*`` and ``?`` stay within one dotted segment, ``**`` spans any."""
    parts = re.split(r"(\*\*|\*|\?)", pattern)
    wildcard = {"**": ".*", "*": "[^.]*", "?": "[^.]"}
    return re.compile("".join(wildcard.get(p, re.escape(p)) for p in parts) + r"\Z")


def by_glob(model: nn.Module, pattern: str) -> BranchSet:
    """Branches named by hand: every module whose path matches ``pattern`` (see :func:`glob_regex`).

    Matches are grouped into layers by their parent module path.
    """
    regex = glob_regex(pattern)
    matches = [path for path, _ in model.named_modules() if path and regex.match(path)]
    if not matches:
        raise ProbekitError(f"--branches {pattern!r} matches no module path (see `probekit branches --model ...`)")
    by_parent: dict[str, list[str]] = {}
    for path in matches:
        by_parent.setdefault(path.rpartition(".")[0], []).append(path)
    layers = tuple(
        BranchLayer(layer_name(parent), "glob", tuple(paths), tuple(paths)) for parent, paths in by_parent.items()
    )
    return BranchSet(layers, "glob")


GLOB_ATTR = "probekit_branch_glob"  # a plain model may name its default branches by a module-path glob


def discover(model: nn.Module, config: DiscoveryConfig) -> BranchSet:
    """Find the branches of ``model``: the user's glob, else the first strategy plugin that finds any, else the
    glob the model names in its ``probekit_branch_glob`` attribute (a string; a plain model's blocks)."""
    if config.pattern:
        return by_glob(model, config.pattern)
    from probekit.plugins import manager

    hook = manager().hook.probekit_discover_branches
    found = hook(model=model, config=config)
    if found is not None and len(found):
        return found
    declared = getattr(model, GLOB_ATTR, None)
    if isinstance(declared, str):
        try:
            return by_glob(model, declared)
        except ProbekitError:
            raise ProbekitError(f"the model's {GLOB_ATTR} {declared!r} matches no module path; name the branches "
                                "with --branches GLOB") from None
    tried = [description for impl in reversed(hook.get_hookimpls())  # a strategy plugin may describe itself
             for description in getattr(impl.plugin, "STRATEGY_DESCRIPTIONS", (f"plugin {impl.plugin_name!r}",))]
    graph_note = (
        " (graph-captured models lose the probekit_branches marker)"
        if type(model).__name__ in ("UnflattenedModule", "GraphModule") else ""
    )
    if depthwise_note(model):
        graph_note += f"; {depthwise_note(model)}"
    raise ProbekitError(
        f"no branches found in {type(model).__name__}: tried {'; '.join(tried)}. "
        f"Name them with --branches GLOB, e.g. --branches 'branches.*'{graph_note}"
    )


def discover_branches(model: nn.Module, pattern: str | None = None) -> BranchSet:
    """The branches of ``model`` as a run finds them (``pattern``: ``--branches GLOB``)."""
    return discover(model, DiscoveryConfig(pattern))
