"""Run analyses in-process on a real model and read the results back."""

from probekit.runner import RunSpec, execute
from probekit.store import open_results


def run_analyses(tmp_path, model, data, plugins, **kwargs):
    """``probekit run`` through the API; returns the opened DataTree."""
    out = tmp_path / f"{'-'.join(plugins)}-{len(list(tmp_path.iterdir()))}.zarr"
    execute(RunSpec(model=str(model), data=data, plugins=list(plugins), out=str(out), progress=False, **kwargs))
    return open_results(out)
