"""pluggy hook specifications: the contract between probekit and its plugins.

Every hook is documented in ``docs/hooks.md`` and covered by a test.
"""

import pluggy

PROJECT = "probekit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def probekit_register_analyses(register):
    """Register analyses: call ``register(AnalysisClass)`` once per class."""


@hookspec
def probekit_register_datasets(register):
    """Register data sources: ``register(scheme, factory)``.

    ``factory(argument: str, seed: int) -> ProbeData`` builds the data for
    ``--data scheme:argument`` (or ``--data scheme`` with an empty argument).
    """


@hookspec
def probekit_register_model_loaders(register):
    """Register model loaders: ``register(scheme, loader)``.

    ``loader(argument: str, options: LoadOptions) -> LoadedModel`` handles
    ``--model scheme:argument`` and returns the module with its identity
    (``LoadedModel(module, spec, sha256)``; a bare module is accepted, with an
    unknown identity).
    """


@hookspec
def probekit_register_model_names(register):
    """Register bare model names (``--model NAME``): ``register(name, loader, description, data)``.

    ``loader(name: str, options: LoadOptions) -> LoadedModel``; ``description``
    and ``data`` (the data spec the model is meant for) are listed by
    ``probekit models``.
    """


@hookspec(firstresult=True)
def probekit_model_from_checkpoint(checkpoint):
    """Build a model from a checkpoint dict loaded (safely) from a model file, or return ``None``."""


@hookspec
def probekit_safe_model_modules():
    """Return module names whose ``nn.Module`` classes whole-module pickles may use (docs/security.md).

    Name only modules whose module classes do nothing but build layers: a
    pickle may construct them with any arguments.
    """


@hookspec
def probekit_register_commands(subparsers):
    """Add subcommands to the CLI: ``subparsers.add_parser(name, ...)`` with ``set_defaults(func=...)``, where
    ``func(args) -> int`` is the exit code.

    Called while ``probekit --help`` is built, from the plugins of the
    ``probekit.commands`` entry-point group only: keep such a module light
    (argparse and nothing heavy at import time).
    """


@hookspec(firstresult=True)
def probekit_discover_branches(model, config):
    """Find the branches of ``model``; return a ``BranchSet`` or ``None``.

    ``config`` is a :class:`probekit.models.branches.DiscoveryConfig`. The first
    plugin that returns a non-empty ``BranchSet`` wins; plugins registered
    later are asked first, so a third-party strategy overrides the built-ins.
    """


@hookspec
def probekit_run_start(run):
    """Called once the model, data and branches are ready, before the pass."""


@hookspec
def probekit_run_finish(run, tree):
    """Called after every node was written; ``tree`` is the store's DataTree."""


@hookspec(firstresult=True)
def probekit_plot(name, node):
    """Draw the stored node of analysis ``name``; return a list of matplotlib Figures, or ``None``.

    ``node`` is the node as an ``xr.Dataset``, read lazily from the store:
    use its reductions, not its per-sample arrays. Return ``None`` for nodes
    that are not yours; the first plugin that returns figures wins, and
    plugins registered later are asked first. Build figures with
    ``probekit.report.plotting.new_figure`` (or ``matplotlib.figure.Figure``, never
    pyplot) and give each a label (``fig.set_label``: its file name) and a
    ``suptitle`` (its caption).
    """


def analysis_hooks(analysis):
    """The two hook implementations of a plugin module that provides one analysis.

    The drawing function is the class's ``plot`` (``"module:function"``), imported only when a report draws
    this analysis. Use as ``probekit_register_analyses, probekit_plot = analysis_hooks(MyAnalysis)``.
    """

    @hookimpl
    def probekit_register_analyses(register):
        register(analysis)

    @hookimpl
    def probekit_plot(name, node):
        if name != analysis.name or analysis.plot is None:
            return None
        from importlib import import_module

        module, _, function = analysis.plot.partition(":")
        return getattr(import_module(module), function)(node)

    return probekit_register_analyses, probekit_plot
