"""Bundled models: name -> architecture + committed weights (``weights/<name>.pt``).

Each weights file is ``{"recipe": name, "config": {...builder kwargs}, "state_dict": ...,
"metrics": {...}}``, written by ``probekit train <name>``; ``docs/models.md`` records how.
Files of that form trained elsewhere (``probekit train toy2 --branches 40 --out f.pt``)
load as ``--model f.pt``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from probekit.zoo.architectures import branched_perceptron, digits_branched, digits_moe
from probekit.zoo.band_pass import band_pass
from probekit.zoo.generator import branched_generator
from probekit.zoo.resnet import branched_resnet18
from probekit.zoo.resnet20 import resnet20
from probekit.errors import ProbekitError

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class ZooEntry:
    """A bundled model: its builder, description and the data it was trained on."""

    build: Callable[..., nn.Module]
    description: str
    data: str
    probe_data: str = ""  # what `probekit run` probes when --data is not given (bundled or offline where possible)

    def weights_path(self, name: str) -> Path:
        return WEIGHTS_DIR / f"{name}.pt"


ZOO: dict[str, ZooEntry] = {
    "toy1": ZooEntry(branched_perceptron, "paper toy 1: 10 LeakyReLU perceptron branches", "toy1", "toy1"),
    "toy2": ZooEntry(branched_perceptron, "paper toy 2: 20 LeakyReLU perceptron branches", "toy2", "toy2"),
    "digits-branched8": ZooEntry(digits_branched, "8 summed small-CNN branches on 8x8 digits", "digits:test",
                                 "digits:test"),
    "digits-moe8": ZooEntry(digits_moe, "8 small-CNN experts under a top-2 linear router on 8x8 digits",
                            "digits:test", "digits:test"),
    "cifar10-branched16": ZooEntry(branched_resnet18, "16 summed slim-ResNet18 branches on CIFAR-10 (paper section 6)",
                                   "cifar10:../shared/data/cifar10", "cifar10-sample"),
    "afhq-cat-branched9": ZooEntry(branched_generator, "9-branch generator re-generating AFHQ cats (paper section 7)",
                                   "imagefolder:../shared/data/samples/afhq"),
    "afhq-cat-diffusion9": ZooEntry(branched_generator, "9 wider branches with a learnt nonlinear diffusion "
                                    "(paper Eqs. 16-17) re-generating AFHQ cats at 64 px",
                                    "imagefolder:../shared/data/samples/afhq"),
    "resnet20-cifar10": ZooEntry(resnet20, "plain CIFAR ResNet20, third-party pretrained weights (BSD-2-Clause); "
                                 "its 9 residual blocks are probed as branches", "cifar10:../shared/data/cifar10",
                                 "cifar10-sample"),
    "afhq-cat-bandpass9": ZooEntry(band_pass, "baseline, no parameters: 9 difference-of-Gaussian bands of the "
                                   "input at 64 px (scales 0.5 to 16 px), shaped like the cat generators",
                                   "imagefolder:../shared/data/samples/afhq"),
    "celeba-branched9": ZooEntry(branched_generator, "9-branch generator, CelebA female<->male (paper section 7)",
                                 "imagefolder:../shared/data/celeba-64/test"),
}


def load_zoo_model(name: str) -> nn.Module:
    """Build a bundled model and load its committed weights."""
    entry = ZOO[name]
    path = entry.weights_path(name)
    if not path.is_file():
        raise ProbekitError(f"weights of zoo model {name!r} are missing ({path}); run `probekit train {name}`")
    return build_from_checkpoint(torch.load(path, map_location="cpu", weights_only=True))


def is_zoo_checkpoint(obj) -> bool:
    """Whether ``obj`` is a checkpoint written by ``probekit train``."""
    return isinstance(obj, dict) and obj.get("recipe") in ZOO and "state_dict" in obj and "config" in obj


def build_from_checkpoint(checkpoint: dict) -> nn.Module:
    """The zoo architecture named by ``checkpoint['recipe']``, with its weights (and class names, if any)."""
    entry = ZOO[checkpoint["recipe"]]
    config = checkpoint["config"]
    try:
        model = entry.build(**config) if isinstance(config, dict) else None
        if model is None:
            raise TypeError("its config is not a mapping")
        model.load_state_dict(checkpoint["state_dict"])
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:  # a config or weights this build cannot take
        raise ProbekitError(f"this {checkpoint['recipe']} checkpoint does not fit its architecture: "
                            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    model.probekit_data = entry.probe_data or entry.data  # the default --data (probekit.run.data_choice)
    names = checkpoint.get("metrics", {}).get("classes")
    if names and hasattr(model, "class_names"):
        model.class_names = list(names)
    return model
