"""``probekit.plot``: a result's figures as matplotlib figures, for a notebook (the report draws the same)."""

from __future__ import annotations

from probekit.errors import ProbekitError
from probekit.report.evidence_plot import plot_evidence


def plot(results, name: str | None = None) -> list:
    """The figures the report draws for one analysis: its plugin's own and its evidence figures.

    ``results``: a DataTree from :func:`probekit.probe` or :func:`probekit.open_results` (then ``name`` picks the
    analysis; it may be left out when the tree holds one), a node of it, or its Dataset. Returns a list of
    ``matplotlib.figure.Figure`` (a notebook shows each one returned or displayed).
    """
    import xarray as xr

    from probekit.plugins import manager

    if isinstance(results, xr.DataTree) and results.children:
        names = sorted(results.children)
        if name is None:
            if len(names) != 1:
                raise ProbekitError(f"the results hold {', '.join(names)}: name the one to plot")
            name = names[0]
        if name not in results.children:
            raise ProbekitError(f"no analysis {name!r} in the results; they hold {', '.join(names)}")
        results = results[name]
    ds = results.to_dataset() if isinstance(results, xr.DataTree) else results
    if not isinstance(ds, xr.Dataset):
        raise ProbekitError(f"plot() takes probe()'s results, a node of them or a Dataset, not {type(ds).__name__}")
    name = name or ds.attrs.get("plugin") or (results.name if isinstance(results, xr.DataTree) else None)
    if not name:
        raise ProbekitError("plot() cannot tell which analysis this is: pass name=")
    figures = manager().hook.probekit_plot(name=name, node=ds) or []
    _render_inline()
    return [*figures, *plot_evidence(ds, name, None)]


def _render_inline() -> None:
    """In IPython (a notebook), show a returned figure as a PNG: the figures are pyplot-free ``Figure`` objects,
    which IPython shows as text until a PNG formatter is registered for them."""
    import sys

    if "IPython" not in sys.modules:
        return
    from IPython import get_ipython
    from matplotlib.figure import Figure

    shell = get_ipython()
    if shell is None:
        return
    from IPython.core.pylabtools import print_figure

    shell.display_formatter.formatters["image/png"].for_type(Figure, lambda fig: print_figure(fig, "png"))
