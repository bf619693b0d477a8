"""probekit: probe branched neural networks and measure Branch Specialization.

The public names are imported lazily, so ``probekit --help`` does not pay for
importing torch, xarray and zarr.
"""

from importlib import import_module

__version__ = "1.4.0"

_PUBLIC = {
    "probe": "probekit.run.probing",
    "plot": "probekit.report.inline",
    "Analysis": "probekit.run.analysis",
    "Batch": "probekit.run.analysis",
    "RunContext": "probekit.run.analysis",
    "SummedBranches": "probekit.models.branched",
    "mark_branches": "probekit.models.branched",
    "MixtureOfExperts": "probekit.models.experts",
    "TopKGate": "probekit.models.experts",
    "mark_experts": "probekit.models.experts",
    "ProbekitError": "probekit.errors",
    "hookimpl": "probekit.hookspecs",
    "open_results": "probekit.store.results",
    "load_model": "probekit.models.loading",
    "LoadOptions": "probekit.models.loading",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'probekit' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names (tab completion in a notebook lists them, though they load lazily)."""
    return sorted(__all__)
