"""Example probekit plugin: the ``peak`` analysis and the ``sine`` data source."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr
from torch.utils.data import TensorDataset

from probekit.api import Analysis, Batch, ProbekitError, ProbeData, branch_coords, hookimpl


@dataclass
class PeakOptions:
    """``relative``: divide each peak by the largest peak of its layer."""

    relative: bool = False


class Peak(Analysis):
    name = "peak"
    merge_rules = {"peaks": "max"}
    description = "largest absolute branch response over all samples"
    Options = PeakOptions

    def __init__(self, context, options):
        super().__init__(context, options)
        self.peaks = {layer.name: torch.zeros(len(layer.branches)) for layer in context.branchset.layers}

    def update(self, batch: Batch) -> None:
        for name, responses in batch.responses.items():  # [N, K, D]
            batch_peak = responses.abs().amax(dim=(0, 2)).float().cpu()
            self.peaks[name] = torch.maximum(self.peaks[name], batch_peak)

    def finalize(self) -> xr.Dataset:
        values = []
        for layer in self.context.branchset.layers:
            peak = self.peaks[layer.name]
            values.append(peak / peak.max().clamp_min(1e-30) if self.options.relative else peak)
        units = "1" if self.options.relative else "output units"
        return xr.Dataset(
            {"peak": ("branch", torch.cat(values).numpy(), {"long_name": "peak |response|", "units": units})},
            coords=branch_coords(self.context),
        )

    def summary(self, ds: xr.Dataset) -> dict:
        return {"largest peak": round(float(ds.peak.max()), 4)}


def sine_data(argument: str, seed: int) -> ProbeData:
    """``sine:N``: rows ``sin(k * linspace(0, pi, 8))`` for k = 1..N, target k."""
    try:
        n = int(argument or 16)
    except ValueError:
        raise ProbekitError(f"sine data needs a count, sine:N, not {argument!r}") from None
    grid = np.linspace(0, np.pi, 8)
    x = torch.tensor(np.stack([np.sin(k * grid) for k in range(1, n + 1)]), dtype=torch.float32)
    return ProbeData(f"sine:{n}", TensorDataset(x, torch.arange(1, n + 1).float()), [str(k) for k in range(1, n + 1)])


@hookimpl
def probekit_register_analyses(register):
    register(Peak)


@hookimpl
def probekit_register_datasets(register):
    register("sine", sine_data)
