"""Forward hooks that capture branch responses, removed in ``finally``."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from probekit.models.branches import BranchSet
from probekit.errors import ProbekitError
from probekit.models.graph_models import tap_sink


class ResponseCapture:
    """Collects each hooked module's output during one forward pass.

    Outputs are detached and cloned, so an in-place op after the module (a
    ``ReLU(inplace=True)``, an ``out += v``) cannot change what was captured.
    """

    def __init__(self, branchset: BranchSet):
        self.branchset = branchset
        self._outputs: dict[str, torch.Tensor] = {}

    def _hook(self, path: str):
        def hook(module, inputs, output):
            if not isinstance(output, torch.Tensor):
                raise ProbekitError(f"branch module {path!r} returned {type(output).__name__}, not a tensor")
            self._outputs[path] = output.detach().clone()

        return hook

    def take(self, n: int | None = None) -> dict[str, torch.Tensor]:
        """Responses per layer, ``{layer name: [N, K, D]}``, and reset for the next pass.

        ``n`` keeps only the first ``n`` samples (drops a padded tail).
        """
        responses = {}
        for layer in self.branchset.layers:
            missing = [m for m in layer.modules if m not in self._outputs]
            if missing:
                raise ProbekitError(f"branch module {missing[0]!r} did not run during the forward pass")
            stacked = layer.stack([self._outputs[m] for m in layer.modules])
            responses[layer.name] = stacked if n is None else stacked[:n]
        self._outputs.clear()
        return responses


@contextmanager
def capture(model: nn.Module, branchset: BranchSet):
    """Register one forward hook per branch module (or listen to graph taps); always remove them on exit."""
    recorder = ResponseCapture(branchset)
    tapped = getattr(model, "probekit_taps", {})
    handles = []
    try:
        for layer in branchset.layers:
            for path in layer.modules:
                if path not in tapped:
                    handles.append(model.get_submodule(path).register_forward_hook(recorder._hook(path)))
        with tap_sink(lambda path, output: recorder._hook(path)(None, None, output)):
            yield recorder
    finally:
        for handle in handles:
            handle.remove()
