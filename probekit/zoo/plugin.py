"""The zoo as a plugin: its model names and ``zoo:`` scheme, its checkpoint format, its model modules for the pickle
allowlist, and the figures of its experiments."""

from __future__ import annotations

from probekit.hookspecs import hookimpl
from probekit.models.model_files import LoadedModel, LoadOptions, file_sha256
from probekit.zoo.registry import ZOO, build_from_checkpoint, is_zoo_checkpoint, load_zoo_model

MODEL_MODULES = ("probekit.zoo.architectures", "probekit.zoo.band_pass", "probekit.zoo.generator",
                 "probekit.zoo.resnet", "probekit.zoo.resnet20")


def load_named(name: str, options: LoadOptions) -> LoadedModel:
    """A bundled model with its committed weights, identified by their sha256."""
    from probekit.errors import ProbekitError

    if name not in ZOO:
        raise ProbekitError(f"unknown zoo model {name!r}; bundled: {', '.join(sorted(ZOO))}")
    return LoadedModel(load_zoo_model(name), name, file_sha256(ZOO[name].weights_path(name)))


@hookimpl
def probekit_register_model_loaders(register):
    register("zoo", load_named)


@hookimpl
def probekit_register_model_names(register):
    for name, entry in ZOO.items():
        register(name, load_named, entry.description, entry.data)


@hookimpl
def probekit_model_from_checkpoint(checkpoint):
    return build_from_checkpoint(checkpoint) if is_zoo_checkpoint(checkpoint) else None


@hookimpl
def probekit_safe_model_modules():
    return list(MODEL_MODULES)


@hookimpl
def probekit_plot(name, node):
    if name == "toy-sweep":
        from probekit.zoo.toy_sweep_plot import plot_toy_sweep

        return plot_toy_sweep(node)
    if name == "branch-count":
        from probekit.zoo.branch_count_plot import plot_branch_count

        return plot_branch_count(node)
    if name == "nad":
        from probekit.zoo.nad_plot import plot_nad

        return plot_nad(node)
    if name == "hessian-classes":
        from probekit.zoo.reproduction_plots import plot_hessian_classes

        return plot_hessian_classes(node)
    if name == "moe-synthetic":
        from probekit.zoo.reproduction_plots import plot_moe_synthetic

        return plot_moe_synthetic(node)
    return None
