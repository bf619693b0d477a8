"""The built-in model loaders (a plugin of the core): ``torchvision:NAME`` (randomly initialised unless
``--weights`` is given) and ``hf:DIR`` (a local Hugging Face model folder, :mod:`probekit.models.hf`)."""

from __future__ import annotations

from probekit.errors import ProbekitError
from probekit.hookspecs import hookimpl
from probekit.models.hf import load_hf
from probekit.models.model_files import LoadedModel, LoadOptions, file_sha256, load_state_dict_into


def load_torchvision(name: str, options: LoadOptions) -> LoadedModel:
    """``torchvision:<name>``: the architecture, randomly initialised unless ``--weights`` is given."""
    from torchvision import models

    if name not in models.list_models():
        raise ProbekitError(f"unknown torchvision model {name!r} (see torchvision.models.list_models())")
    model = models.get_model(name, weights=None)
    if not options.weights:
        return LoadedModel(model, f"torchvision:{name}", "none (random initialisation)")
    return LoadedModel(load_state_dict_into(model, options.weights), f"torchvision:{name}",
                       file_sha256(options.weights))


@hookimpl
def probekit_register_model_loaders(register):
    register("torchvision", load_torchvision)
    register("hf", load_hf)
