"""Run analyses in-process on a real model and read the results back."""

from torch import nn

from probekit.run.runner import RunSpec, execute
from probekit.store.results import open_results


def run_analyses(tmp_path, model, data, plugins, **kwargs):
    """``probekit run`` through the API; returns the opened DataTree."""
    out = tmp_path / f"{'-'.join(plugins)}-{len(list(tmp_path.iterdir()))}.zarr"
    execute(RunSpec(model=str(model), data=data, plugins=list(plugins), out=str(out), progress=False, **kwargs))
    return open_results(out)


def assert_activity_set_aside(cli, store, covariance, problem: str = ""):
    """``activity`` of ``store`` is named as damaged (``problem`` matched in the warning) and left out by
    ``open_results`` and ``show``, while ``covariance`` still reads as ``covariance``."""
    import numpy as np
    import pytest

    with pytest.warns(UserWarning, match=f"node 'activity' is damaged and left out{problem}"):
        tree = open_results(store)
    assert "activity" not in tree.children
    np.testing.assert_array_equal(tree["covariance"].cov.values, covariance)
    code, stdout, _ = cli("show", store)
    assert code == 0 and "DAMAGED activity:" in stdout and "[covariance]" in stdout


class PicklableBlock(nn.Module):
    """A module class outside probekit's pickle allowlist until a plugin names this module as safe."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)
