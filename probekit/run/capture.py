"""Forward hooks that capture branch responses and the analyses' taps, always removed on exit."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from probekit.models.branches import BranchSet
from probekit.errors import ProbekitError
from probekit.models.graph_models import tap_sink
from probekit.models.projected_heads import head_contributions
from probekit.models.routed import every_expert, per_sample, routed_contributions
from probekit.run.hooks import forward_hooks


class ResponseCapture:
    """Collects each hooked module's output during one forward pass.

    Outputs are detached and cloned, so an in-place op after the module (a
    ``ReLU(inplace=True)``, an ``out += v``) cannot change what was captured.
    """

    def __init__(self, branchset: BranchSet, ungated: bool = False):
        self.branchset = branchset
        self.ungated = ungated  # also run every token-routed expert on every token (see :meth:`take_ungated`)
        self._ungated: dict[str, torch.Tensor] = {}  # layer name -> [N, K, D] expert outputs before the gate
        self._outputs: dict[str, torch.Tensor] = {}
        self._taps: dict[str, dict[str, torch.Tensor]] = {}
        self._gates: dict[str, torch.Tensor] = {}  # layer name -> [N, K] gate values of the last pass
        self._computed: dict[str, torch.Tensor] = {}  # layer name -> [N, K, D] (kinds 'routed', 'projected-heads')
        self._samples: dict[str, int] = {}  # container path -> batch size it saw (kind 'routed')
        self._token_gates: dict[str, torch.Tensor] = {}  # layer name -> [N, T, K] (kind 'routed')

    def _tap_hook(self, tap: str, key: str, kind: str):
        def keep(value):
            if not isinstance(value, torch.Tensor):
                raise ProbekitError(f"tap {tap!r}: {key} gives {type(value).__name__}, not a tensor")
            self._taps.setdefault(tap, {})[key] = value.detach().clone()

        if kind == "input":
            return lambda module, args: keep(args[0] if args else None)
        return lambda module, args, output: keep(output)

    def take_taps(self, n: int | None = None) -> dict[str, dict[str, torch.Tensor]]:
        """``{tap: {key: [N, ...]}}`` of the last pass (first ``n`` samples), and reset."""
        taps = {tap: {key: value if n is None else value[:n] for key, value in found.items()}
                for tap, found in self._taps.items()}
        self._taps = {}
        return taps

    def _hook(self, path: str):
        def hook(module, inputs, output):
            if not isinstance(output, torch.Tensor):
                raise ProbekitError(f"branch module {path!r} returned {type(output).__name__}, not a tensor")
            self._outputs[path] = output.detach().clone()

        return hook

    def _gate_hook(self, layer: str):
        def hook(module, inputs, output):
            if not isinstance(output, torch.Tensor) or output.dim() != 2:
                raise ProbekitError(f"the gate of {layer!r} must return the gate values [N, K], not "
                                    f"{getattr(output, 'shape', type(output).__name__)}")
            self._gates[layer] = output.detach().clone()

        return hook

    def _batch_size_hook(self, path: str):
        def hook(module, args):
            self._samples[path] = args[0].shape[0]

        return hook

    def _routed_hook(self, layer):
        def hook(module, args, output):
            hidden, index, weights = (a.detach() for a in args[:3])
            with torch.no_grad():
                contributions, gates = routed_contributions(module, hidden, index, weights)
                if self.ungated:
                    every = every_expert(module, hidden)
            samples = self._samples[layer.container]
            responses, self._gates[layer.name] = per_sample(contributions, gates, samples)
            if self.ungated:
                self._ungated[layer.name] = per_sample(every, gates, samples)[0]
            self._computed[layer.name] = responses
            self._token_gates[layer.name] = gates.reshape(samples, -1, gates.shape[1])

        return hook

    def _heads_hook(self, layer):
        heads = len(layer.branches)

        def hook(module, args, output):
            with torch.no_grad():
                self._computed[layer.name] = head_contributions(module, args[0].detach(), heads)

        return hook

    def take(self, n: int | None = None) -> dict[str, torch.Tensor]:
        """Responses per layer, ``{layer name: [N, K, D]}``, and reset for the next pass (gate values stay for
        :meth:`take_gates`).

        ``n`` keeps only the first ``n`` samples (drops a padded tail).
        """
        responses = {}
        for layer in self.branchset.layers:
            computed = layer.kind in ("routed", "projected-heads")
            stacked = self._computed.pop(layer.name) if computed else self._stacked(layer)
            responses[layer.name] = stacked if n is None else stacked[:n]
        self._outputs.clear()
        return responses

    def _stacked(self, layer) -> torch.Tensor:
        missing = [m for m in layer.modules if m not in self._outputs]
        if missing:
            raise ProbekitError(f"branch module {missing[0]!r} did not run during the forward pass")
        stacked = layer.stack([self._outputs[m] for m in layer.modules])
        if layer.kind == "gated":
            gates = self._gates[layer.name]
            if gates.shape != stacked.shape[:2]:
                raise ProbekitError(f"the gate of {layer.name!r} returned {tuple(gates.shape)} values for "
                                    f"{tuple(stacked.shape[:2])} samples and experts")
            if self.ungated:
                self._ungated[layer.name] = stacked
            stacked = stacked * gates.unsqueeze(2)
        return stacked

    def take_gates(self, n: int | None = None) -> dict[str, torch.Tensor]:
        """Gate values of the gated layers, ``{layer name: [N, K]}``, and reset."""
        gates = {name: value if n is None else value[:n] for name, value in self._gates.items()}
        self._gates = {}
        return gates

    def take_ungated(self, n: int | None = None) -> dict[str, torch.Tensor]:
        """With ``ungated=True``: each expert's output before its gate on the gated and token-routed layers,
        ``{layer name: [N, K, D]}`` (routed experts: every expert run on every token), and reset."""
        ungated = {name: value if n is None else value[:n] for name, value in self._ungated.items()}
        self._ungated = {}
        return ungated

    def take_token_gates(self, n: int | None = None) -> dict[str, torch.Tensor]:
        """Every token's gate values on the token-routed layers, ``{layer name: [N, T, K]}``, and reset."""
        gates = {name: value if n is None else value[:n] for name, value in self._token_gates.items()}
        self._token_gates = {}
        return gates


@contextmanager
def capture(model: nn.Module, branchset: BranchSet, taps: dict[str, dict[str, tuple[str, str]]] | None = None,
            ungated: bool = False):
    """Register one forward hook per branch module (or listen to graph taps), and one per tapped module
    (``taps``: ``{tap: {key: (module path, "output" or "input")}}``); always remove them on exit. ``ungated``:
    also keep the experts' outputs before their gates (:meth:`ResponseCapture.take_ungated`)."""
    recorder = ResponseCapture(branchset, ungated)
    tapped = getattr(model, "probekit_taps", {})
    after, before = [], []
    for layer in branchset.layers:
        if layer.kind == "routed":
            after.append((layer.modules[0], recorder._routed_hook(layer)))
            before.append((layer.container, recorder._batch_size_hook(layer.container)))
            continue
        if layer.kind == "projected-heads":
            after.append((layer.modules[0], recorder._heads_hook(layer)))
            continue
        after += [(path, recorder._hook(path)) for path in layer.modules if path not in tapped]
        if layer.kind == "gated":
            after.append((layer.gate, recorder._gate_hook(layer.name)))
    for tap, found in (taps or {}).items():
        for key, (path, kind) in found.items():
            (before if kind == "input" else after).append((path, recorder._tap_hook(tap, key, kind)))
    with forward_hooks(model, after, before), \
            tap_sink(lambda path, output: recorder._hook(path)(None, None, output)):
        yield recorder


def responses_of(model: nn.Module, branchset: BranchSet, inputs) -> dict[str, torch.Tensor]:
    """``{layer name: [N, K, D]}``: the branch responses of one forward pass of ``model`` on ``inputs`` (a tensor or
    a dict of keyword inputs), without gradients; for an analysis that probes a second model on the same batch."""
    from probekit.run.inputs import call_model, count_inputs

    with torch.no_grad(), capture(model, branchset) as recorder:
        call_model(model, inputs)
        return recorder.take(count_inputs(inputs))
