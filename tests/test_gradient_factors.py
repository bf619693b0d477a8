import numpy as np
import pytest
import torch

from probekit import ProbekitError
from probekit.zoo.architectures import LEAKY_SLOPE
from probekit.run.datasets import TOY_POINTS
from probekit.zoo.registry import load_zoo_model
from helpers import run_analyses


def test_toy_factors_match_the_papers_formulas(tmp_path):
    """Eq. 5-6: D_collab = f(x_j) - y_j and D_dist = sigma'(w x_j + b) (x_j, 1) for (w, b)."""
    ds = run_analyses(tmp_path, "toy1", "toy1", ["gradient-factors"])["gradient-factors"]
    model = load_zoo_model("toy1")
    xs, ys = TOY_POINTS["toy1"]
    x = torch.tensor(xs)[:, None]
    with torch.no_grad():
        f = model(x)[:, 0].numpy()
        pre = np.stack([(b.linear.weight * x + b.linear.bias)[:, 0].numpy() for b in model.branches], 1)  # [4, K]
    np.testing.assert_allclose(ds.collaborative.values[:, 0], np.abs(f - np.array(ys)), atol=1e-6)
    slope = np.where(pre > 0, 1.0, LEAKY_SLOPE)
    expected = slope * np.sqrt(np.array(xs)[:, None] ** 2 + 1)
    np.testing.assert_allclose(ds.distributive.values, expected, rtol=1e-5)
    assert ds.attrs["loss"] == "mse"
    # trained to zero loss: every gradient is zeroed by the collaborative factor, silent ones by both
    codes = ds.zeroed_by.values
    assert set(np.unique(codes)) <= {1, 3}
    np.testing.assert_array_equal(codes == 3, expected <= 0.1 * expected.max(1, keepdims=True))


def test_branch_gradient_norms_equal_per_sample_autograd(tmp_path):
    ds = run_analyses(tmp_path, "digits-branched8", "digits:test", ["gradient-factors"], limit=6,
                      batch_size=4)["gradient-factors"]
    assert ds.attrs["loss"] == "ce"
    model = load_zoo_model("digits-branched8")
    from probekit.run.data import load_data

    data = load_data("digits:test")
    for i in (0, 5):
        x, y = data.dataset[i]
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[None]), torch.tensor([int(y)]), reduction="sum").backward()
        for k in (0, 7):
            grad = torch.cat([p.grad.flatten() for p in model.branches[k].parameters()])
            np.testing.assert_allclose(ds.gradient.values[i, k], float(grad.norm()), rtol=1e-4)
    assert np.allclose(ds.zeroed_fraction.sum("cause"), 1.0)


def test_needs_summed_branches(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, groups=2))
    path = tmp_path / "g.pt"
    torch.save(model, path)
    with pytest.raises(ProbekitError, match="needs summed branches"):
        run_analyses(tmp_path, path, "random:4,6,6", ["gradient-factors"], limit=2)


def test_bad_option(tmp_path):
    with pytest.raises(ProbekitError, match="loss must be one of"):
        run_analyses(tmp_path, "toy1", "toy1", ["gradient-factors"], options={"gradient-factors": {"loss": "l1"}})
