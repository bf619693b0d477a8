import numpy as np
import torch

from probekit.models.branches import DiscoveryConfig, discover
from probekit.run.capture import capture
from probekit.run.data import load_data
from probekit.zoo.registry import load_zoo_model
from helpers import run_analyses


def _all_at_once(model, data_spec, limit):
    """F F^T of all responses, computed in one go: ``[K, N*D] @ [N*D, K]``."""
    data = load_data(data_spec)
    x = torch.stack([data.dataset[i][0] for i in range(limit)])
    bs = discover(model, DiscoveryConfig())
    with torch.no_grad(), capture(model, bs) as recorder:
        model(x)
        responses = recorder.take()["model"]  # [N, K, D]
    f = responses.transpose(0, 1).reshape(len(bs), -1).double().numpy()
    return f @ f.T / limit


def test_streaming_equals_all_at_once(tmp_path):
    model = load_zoo_model("digits-branched8").eval()
    ds = run_analyses(tmp_path, "digits-branched8", "digits:test", ["covariance"], batch_size=7)["covariance"]
    expected = _all_at_once(model, "digits:test", 360)
    np.testing.assert_allclose(ds.cov.values, expected, rtol=1e-5)
    diag = np.sqrt(np.diag(expected))
    np.testing.assert_allclose(ds.corr.values, expected / np.outer(diag, diag), rtol=1e-5)
    assert ds.attrs["n_samples"] == 360


def test_cross_layer_entries_are_nan_and_blocks_are_symmetric(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1, groups=2), torch.nn.Conv2d(8, 8, 1, groups=4))
    path = tmp_path / "m.pt"
    torch.save(model, path)
    ds = run_analyses(tmp_path, path, "random:4,6,6", ["covariance"], limit=9, batch_size=4)["covariance"]
    cov = ds.cov.values
    assert cov.shape == (6, 6) and list(ds.branch_layer.values) == ["0"] * 2 + ["1"] * 4
    assert np.isnan(cov[:2, 2:]).all() and np.isnan(cov[2:, :2]).all()
    assert np.allclose(cov[:2, :2], cov[:2, :2].T) and np.allclose(np.diag(ds.corr.values), 1.0)
