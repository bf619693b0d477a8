"""The one declared API for plugin authors: an analysis plugin imports ``probekit.api`` and third-party libraries,
nothing else of probekit (an import-linter contract checks the bundled plugins).

Names load lazily, so importing this module costs nothing until a name is used. ``docs/writing-plugins.md``
documents every name with its signature.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

_NAMES = {
    # analyses and their run
    "Analysis": "probekit.run.analysis", "Batch": "probekit.run.analysis", "RunContext": "probekit.run.analysis",
    "NoOptions": "probekit.run.analysis", "Tap": "probekit.run.taps", "SampleArray": "probekit.run.sample_arrays",
    "forward_hooks": "probekit.run.hooks", "ProbeData": "probekit.run.data",
    "responses_of": "probekit.run.capture", "discover_branches": "probekit.models.branches",
    "call_model": "probekit.run.inputs", "take_inputs": "probekit.run.inputs", "count_inputs": "probekit.run.inputs",
    "to_device": "probekit.run.inputs", "edit_branches": "probekit.run.branch_edits",
    "compensated_add": "probekit.run.merging", "compensated_value": "probekit.run.merging",
    "hookimpl": "probekit.hookspecs", "analysis_hooks": "probekit.hookspecs", "ProbekitError": "probekit.errors",
    # branches and models
    "BranchLayer": "probekit.models.branches", "BranchSet": "probekit.models.branches",
    "glob_regex": "probekit.models.branches", "load_model": "probekit.models.loading",
    "LoadOptions": "probekit.models.loading", "LoadedModel": "probekit.models.loading",
    "BranchScores": "probekit.models.classifier", "classifier_layer": "probekit.models.classifier",
    "require_classifier": "probekit.models.classifier", "head_runs": "probekit.models.projected_heads",
    "resolve_loss": "probekit.models.losses", "summed_loss": "probekit.models.losses",
    "model_states": "probekit.models.initial_state", "init_note": "probekit.models.initial_state",
    "init_states": "probekit.models.initial_state",
    # shared measures
    "relative_norms": "probekit.measures.activity_rule", "active_flags": "probekit.measures.activity_rule",
    "count_flags": "probekit.measures.activity_rule", "describe_count": "probekit.measures.activity_rule",
    "image_layer": "probekit.measures.image_components", "components": "probekit.measures.image_components",
    "inputs_like": "probekit.measures.image_components", "pixel_correlation": "probekit.measures.image_components",
    "fidelity": "probekit.measures.image_components",
    "off_block_share": "probekit.measures.blocks",
    "dispatch_counts": "probekit.measures.routing", "dispatch_entropy": "probekit.measures.routing",
    # evidence: nulls, intervals, corrections and their schema convention
    "EvidenceOptions": "probekit.stats.evidence", "evidence_rng": "probekit.stats.evidence",
    "add_test": "probekit.stats.evidence", "add_interval": "probekit.stats.evidence",
    "add_evidence": "probekit.stats.evidence", "permutation_evidence": "probekit.stats.evidence",
    "smallest_adjusted_p": "probekit.stats.evidence", "summarise_null": "probekit.stats.permutation",
    "describe_p": "probekit.stats.evidence", "SIGNIFICANCE": "probekit.stats.evidence",
    "permutation_p": "probekit.stats.permutation", "permute_within": "probekit.stats.permutation",
    "permutation_null": "probekit.stats.permutation", "bootstrap_ci": "probekit.stats.bootstrap",
    "resample_indices": "probekit.stats.bootstrap", "adjust_p": "probekit.stats.corrections",
    # results: coordinates and stores
    "branch_coords": "probekit.run.coords", "class_coords": "probekit.run.coords",
    "layer_coords": "probekit.run.coords", "sample_coords": "probekit.run.coords",
    "open_results": "probekit.store.results",
    # figures
    "new_figure": "probekit.report.plotting", "axis_label": "probekit.report.plotting",
    "layers_of": "probekit.report.plotting", "panel_caption": "probekit.report.plotting",
    "short_names": "probekit.report.plotting", "branch_ticks": "probekit.report.plotting",
    "MAX_PANELS": "probekit.report.plotting", "MAX_MATRIX_LABELS": "probekit.report.plotting",
}

__all__ = sorted(_NAMES)

if TYPE_CHECKING:  # for type checkers and editors; at run time the names load on first use
    from probekit.errors import ProbekitError  # noqa: F401
    from probekit.hookspecs import analysis_hooks, hookimpl  # noqa: F401
    from probekit.models.branches import BranchLayer, BranchSet, discover_branches, glob_regex  # noqa: F401
    from probekit.run.capture import responses_of  # noqa: F401
    from probekit.models.loading import LoadedModel, LoadOptions, load_model  # noqa: F401
    from probekit.models.projected_heads import head_runs  # noqa: F401
    from probekit.run.analysis import Analysis, Batch, NoOptions, RunContext  # noqa: F401
    from probekit.run.branch_edits import edit_branches  # noqa: F401
    from probekit.run.inputs import call_model, count_inputs, take_inputs, to_device  # noqa: F401
    from probekit.run.sample_arrays import SampleArray  # noqa: F401
    from probekit.run.taps import Tap  # noqa: F401
    from probekit.stats.bootstrap import bootstrap_ci, resample_indices  # noqa: F401
    from probekit.stats.corrections import adjust_p  # noqa: F401
    from probekit.stats.evidence import (SIGNIFICANCE, EvidenceOptions, add_evidence, add_interval,  # noqa: F401
                                         add_test, describe_p, evidence_rng, permutation_evidence,
                                         smallest_adjusted_p)
    from probekit.stats.permutation import (permutation_null, permutation_p, permute_within,  # noqa: F401
                                            summarise_null)
    from probekit.store.results import open_results  # noqa: F401


def __getattr__(name: str):
    if name in _NAMES:
        value = getattr(import_module(_NAMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'probekit.api' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
