"""The Analysis base class and its typed options.

An analysis is a class with a ``name``, an ``Options`` dataclass (unknown keys
are an error), ``update(batch)`` called once per batch with streaming state
only, and ``finalize() -> xr.Dataset``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from probekit.run.merging import merge_value
from probekit.run.sample_arrays import SampleArray

if TYPE_CHECKING:
    import xarray as xr
    from torch import nn

    from probekit.models.branches import BranchSet
    from probekit.run.data import ProbeData


@dataclass
class Batch:
    """One batch of the streaming pass.

    ``index``: ``[N]`` positions in the probed data; ``inputs``: ``[N, ...]``;
    ``targets``: ``[N]`` or ``None``; ``outputs``: the model's output ``[N, ...]``;
    ``responses``: ``{layer name: [N, K, D]}`` branch responses (K branches,
    each flattened to D values); ``taps``: ``{tap name: {module path or branch
    name: [N, ...]}}``, the unflattened tensors the analyses' ``taps`` asked for
    (:mod:`probekit.run.taps`); ``gates``: ``{layer name: [N, K]}`` gate values
    of the gated (mixture-of-experts) layers (of token-routed experts: the mean
    over each sample's tokens); ``token_gates``: ``{layer name: [N, T, K]}``
    every token's gate values on the token-routed layers; ``ungated``: ``{layer
    name: [N, K, D]}`` each expert's output before its gate, on the gated and
    token-routed layers, only when an analysis sets ``needs_ungated``; all on the run's
    device. ``inputs`` is a dict of tensors (``input_ids``, ...) for token
    models: use ``probekit.api.call_model`` and ``take_inputs`` to feed it.
    """

    index: torch.Tensor
    inputs: torch.Tensor | dict[str, torch.Tensor]
    targets: torch.Tensor | None
    outputs: torch.Tensor
    responses: dict[str, torch.Tensor]
    taps: dict[str, dict[str, torch.Tensor]] = dataclasses.field(default_factory=dict)
    gates: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    token_gates: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    ungated: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class RunContext:
    """What an analysis knows about the run when it is created.

    ``staging`` maps an analysis name to the folder of its node being
    written, or is ``None`` when no store is written (per-sample arrays then
    stay in memory). ``model`` is the probed module, for analyses that run
    their own forward and backward passes (``needs_grad``).
    """

    branchset: BranchSet
    data: ProbeData
    n_samples: int
    device: torch.device
    seed: int
    staging: Callable[[str], Path] | None = None
    model: nn.Module | None = None
    shard: range | None = None  # the sample positions this process probes (all by default)
    align: int | None = None  # shards start at multiples of this; per-sample chunks must divide it
    resume_from: int = 0  # a resumed run: rows before this position are already on disk
    random_init: bool = False  # the model was loaded without weights (e.g. torchvision:NAME without --weights)
    batch_size: int | None = None  # samples per batch (the last batch may be smaller)
    response_sizes: dict[str, int] = dataclasses.field(default_factory=dict)  # layer name -> values per response
    arrays: list = dataclasses.field(default_factory=list)  # every SampleArray made, for checkpoints

    @property
    def rows(self) -> range:
        """The sample positions this process probes."""
        return self.shard if self.shard is not None else range(self.n_samples)

    def sample_array(self, analysis: str, name: str, dims: tuple[str, ...], tail: tuple[int, ...], dtype,
                     attrs: dict) -> SampleArray:
        """A ``[n_samples, *tail]`` per-sample variable of ``analysis``'s node, streamed to disk (this
        process writes the rows of its shard)."""
        group = self.staging(analysis) if self.staging is not None else None
        array = SampleArray(group, name, dims, (self.n_samples, *tail), dtype, attrs, self.rows, self.align,
                            self.resume_from)
        array.analysis = analysis
        self.arrays.append(array)
        return array


@dataclass
class NoOptions:
    """An analysis without options."""


class Analysis:
    """Base class for analyses; subclass it and register it from a plugin.

    ``merge_rules`` names the attributes that hold streaming state and how two shards' values combine
    (:mod:`probekit.run.merging`); ``{}`` means no streaming state, ``None`` (the default) that it is not
    declared, and such an analysis cannot run on several processes or resume. Per-sample arrays made with
    ``context.sample_array`` are never merge state: the runner writes and restores them. ``plot`` names the
    drawing function as ``"module:function"`` (imported only when a report draws the node); ``taps`` the raw
    module tensors the analysis needs (:class:`probekit.run.taps.Tap`). Every class is validated when it is
    registered (:mod:`probekit.run.validation`).
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    needs_grad: ClassVar[bool] = False
    needs_targets: ClassVar[bool] = False  # checked before the pass (targets may be the model's predictions)
    needs_classes: ClassVar[bool] = False
    needs_ungated: ClassVar[bool] = False  # Batch.ungated: token-routed experts then run on every token (K times)
    merge_rules: ClassVar[dict[str, str] | None] = None
    plot: ClassVar[str | None] = None
    taps: ClassVar[dict[str, Any]] = {}

    def __init__(self, context: RunContext, options: Any):
        self.context = context
        self.options = options

    def update(self, batch: Batch) -> None:
        raise NotImplementedError

    def finalize(self) -> xr.Dataset:
        raise NotImplementedError

    def summary(self, ds: xr.Dataset) -> dict[str, Any]:
        """Key numbers of a finalized result, shown by ``probekit show`` (JSON-able)."""
        return {}

    def note(self) -> str | None:
        """After the pass: one short clause on what the analysis chose for the user (a default selection, a
        method), joined into the run's note line; ``None`` when there is nothing to say."""
        return None

    def state(self) -> dict[str, Any]:
        """The streaming state named by ``merge_rules``."""
        return {name: getattr(self, name) for name in self.merge_rules or {}}

    def merge(self, other: dict[str, Any], rows: range) -> None:
        """Fold in ``other``, the :meth:`state` of the same analysis over sample positions ``rows``."""
        for name, rule in (self.merge_rules or {}).items():
            custom = getattr(self, f"merge_{name}", None)
            setattr(self, name, merge_value(rule, getattr(self, name), other[name], rows, custom))
