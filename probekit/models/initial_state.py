"""A model's initialisation, for comparing an analysis before and after training."""

from __future__ import annotations

import copy

import torch
from torch import nn

from probekit.errors import ProbekitError


def initialised_copy(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` with every module's ``reset_parameters()`` rerun under ``seed`` (eval mode).

    This is PyTorch's default initialisation of each layer; a recipe that initialises some layers
    differently (e.g. zeroed heads) is not reproduced.
    """
    fresh = copy.deepcopy(model)
    torch.manual_seed(seed)
    for module in fresh.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return fresh.eval()


def never_trained(model: nn.Module) -> bool:
    """Whether the model's BatchNorm layers all still hold their initial statistics (no batch ever tracked, mean
    0, variance 1): a freshly built architecture saved without training. ``False`` without BatchNorm (unknown)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
             and m.running_mean is not None]
    return bool(norms) and all(
        int(m.num_batches_tracked) == 0 and not m.running_mean.any() and bool((m.running_var == 1).all())
        for m in norms)


def model_states(model: nn.Module | None, analysis: str, compare_init: bool, seed: int,
                 random_init: bool = False, init_seeds: list[int] | tuple[int, ...] = ()) -> dict[str, nn.Module]:
    """``{"trained": model}`` (``"random-init"`` for a model loaded without weights), plus ``"init"``
    (:func:`initialised_copy` under ``seed``) with ``compare_init``, or, with ``init_seeds``, one
    ``"init-seedS"`` per seed (so a comparison with the initialisation has its seed spread); the analysis named
    ``analysis`` needs the module itself."""
    if model is None:
        raise ProbekitError(f"{analysis} needs the model itself (not just its recorded responses)")
    if len(set(init_seeds)) != len(init_seeds):
        raise ProbekitError(f"{analysis}.init_seeds must be distinct, not {list(init_seeds)}")
    states = {"random-init" if random_init else "trained": model}
    if init_seeds:
        states |= {f"init-seed{s}": initialised_copy(model, s) for s in init_seeds}
    elif compare_init:
        states["init"] = initialised_copy(model, seed)
    return states


def init_note(states, seed: int) -> str:
    """The ``init`` attr of a node with a ``state`` dim."""
    seeds = [state.removeprefix("init-seed") for state in states if state.startswith("init-seed")]
    if seeds:
        return f"PyTorch default init (reset_parameters), seeds {', '.join(seeds)}"
    return f"PyTorch default init (reset_parameters), seed {seed}" if "init" in states else "not computed"


def init_states(states) -> list[str]:
    """The names of the initialisation states among ``states`` (``init`` or ``init-seedS``)."""
    return [s for s in states if s == "init" or s.startswith("init-seed")]
