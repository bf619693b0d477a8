"""probekit: probe branched neural networks and measure Branch Specialization.

The public names are imported lazily, so ``probekit --help`` does not pay for
importing torch, xarray and zarr.
"""

from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    "Analysis": "probekit.analysis",
    "Batch": "probekit.analysis",
    "RunContext": "probekit.analysis",
    "SummedBranches": "probekit.branched",
    "mark_branches": "probekit.branched",
    "ProbekitError": "probekit.errors",
    "hookimpl": "probekit.hookspecs",
    "open_results": "probekit.store",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'probekit' has no attribute {name!r}")
