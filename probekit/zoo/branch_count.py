"""Active and silent branches against M on CIFAR-10 (paper Fig. 5 left, appendix Fig. 17).

For each M, a ``branched-resnet18`` is trained with the ``cifar10-branched16``
recipe (:mod:`probekit.zoo.cifar_training`) at a reduced budget (fewer epochs, a
fixed random subset of the train split), then probed with the ``activity``
analysis. Each M's run keeps its epoch checkpoints under
``<checkpoint_dir>/M<m>/``, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from probekit.measures.activity_rule import active_flags, describe_count, relative_norms
from probekit.errors import ProbekitError

ZOO_RECIPE = "cifar10-branched16"
ACTIVE_THRESHOLD = 0.1  # the paper's rule, as the activity analysis applies it by default


@dataclass(frozen=True)
class BranchCountConfig:
    """The sweep: branch counts, the reduced training budget and the probe data."""

    branches: tuple[int, ...] = (2, 4, 8, 16, 32)
    epochs: int = 3
    train_limit: int | None = 10_000
    probe_data: str = "cifar10-sample"
    seed: int = 0
    checkpoint_dir: str = "runs/branch-count"
    head_init: str = "zero"  # the recipe's: every branch head starts at zero; "default": PyTorch's init
    scheme: str = "clamped"  # or "logits"
    max_lr: float = 0.02

    def check(self) -> None:
        if self.epochs <= 0 or (self.train_limit is not None and self.train_limit <= 0):
            raise ProbekitError("--epochs and --train-limit must be positive")
        if min(self.branches) < 1:
            raise ProbekitError("branch counts must be at least 1")
        if not (self.max_lr > 0 and np.isfinite(self.max_lr)):
            raise ProbekitError("--max-lr must be a positive finite number")


def train_one(config: BranchCountConfig, m: int, data_root: str, progress: bool) -> tuple[torch.nn.Module, dict]:
    """Train (or resume, or reuse) the M-branch model, saved as a zoo-format ``model.pt`` beside its checkpoints;
    return it and its metrics."""
    from probekit.zoo.cifar_training import CifarRecipe, train_cifar

    folder = Path(config.checkpoint_dir) / f"M{m}"
    recipe = CifarRecipe(branches=m, epochs=config.epochs, seed=config.seed, train_limit=config.train_limit,
                         head_init=config.head_init, scheme=config.scheme, max_lr=config.max_lr)
    model, model_config, metrics = train_cifar(recipe, data_root, folder, resume=True, progress=progress)
    path = folder / "model.pt"
    torch.save({"recipe": ZOO_RECIPE, "config": model_config, "state_dict": model.state_dict(),
                "metrics": metrics}, path)
    return model, metrics


def relative_branch_norms(model: torch.nn.Module, probe_data: str, batch_size: int = 250) -> np.ndarray:
    """``[M]``: each branch's response norm over the probe data, relative to the largest (the paper's activity
    measure, :mod:`probekit.measures.activity_rule`; NaN when a norm is NaN/Inf)."""
    from probekit.models.branches import DiscoveryConfig, discover
    from probekit.run.capture import capture
    from probekit.run.data import batches, load_data

    data = load_data(probe_data)
    branchset = discover(model, DiscoveryConfig())
    (layer,) = branchset.layers
    total = torch.zeros(len(layer.branches), dtype=torch.float64)
    with capture(model, branchset) as recorder, torch.no_grad():
        for _, x, _ in batches(data.loader(batch_size, None)):
            model(x)
            total += recorder.take()[layer.name].double().pow(2).sum((0, 2))
    return relative_norms(total.sqrt().numpy())


def run_branch_count(config: BranchCountConfig, data_root: str, progress: bool = True) -> xr.Dataset:
    """Train and probe every M; the node of ``probekit experiment branch-count``."""
    config.check()
    counts = np.array(config.branches)
    relative = np.full((len(counts), counts.max()), np.nan, np.float32)
    accuracy, seconds, n_active = (np.zeros(len(counts)) for _ in range(3))
    for i, m in enumerate(counts):
        if progress:
            print(f"M = {m}: training ({config.epochs} epochs) and probing", flush=True)
        model, metrics = train_one(config, int(m), data_root, progress)
        relative[i, :m] = relative_branch_norms(model.eval(), config.probe_data)
        n_active[i] = active_flags(relative[i, :m], ACTIVE_THRESHOLD).sum()  # NaN when any flag is unknown
        accuracy[i], seconds[i] = metrics["test_accuracy"], metrics["train_seconds"]
    return xr.Dataset(
        {
            "relative_norm": (("n_branches", "branch"), relative,
                              {"long_name": "branch response norm relative to the largest", "units": "1",
                               "description": "NaN for branches past the model's M"}),
            "n_active": ("n_branches", n_active,
                         {"long_name": "active branches", "units": "branches",
                          "description": "relative_norm >= threshold (activity's rule)"}),
            "n_silent": ("n_branches", counts - n_active,
                         {"long_name": "silent branches", "units": "branches"}),
            "test_accuracy": ("n_branches", accuracy,
                              {"long_name": "test accuracy after training (full CIFAR-10 test split)",
                               "units": "1"}),
            "train_seconds": ("n_branches", seconds, {"long_name": "training wall time", "units": "s"}),
        },
        coords={"n_branches": ("n_branches", counts),
                "branch": ("branch", np.array([f"branches.{k}" for k in range(counts.max())], dtype=object))},
        attrs={"threshold": ACTIVE_THRESHOLD,
               "options": json.dumps({**asdict(config), "branches": [int(m) for m in counts]}, sort_keys=True)},
    )


def summary(ds: xr.Dataset) -> dict:
    """Per M: active, silent and test accuracy."""
    return {f"M={int(m)}": f"active {describe_count(float(ds.n_active.sel(n_branches=m)), int(m))},"
            f" test accuracy {float(ds.test_accuracy.sel(n_branches=m)):.3f}" for m in ds.n_branches.values}
