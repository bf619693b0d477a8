import numpy as np
import pytest
import torch

from probekit import ProbekitError
from probekit.run.data import load_data
from probekit.zoo.registry import load_zoo_model
from helpers import run_analyses


def test_profiles_match_a_direct_computation(tmp_path):
    ds = run_analyses(tmp_path, "digits-branched8", "digits:test", ["specialization"], batch_size=50)["specialization"]
    model = load_zoo_model("digits-branched8")
    data = load_data("digits:test")
    x = torch.stack([data.dataset[i][0] for i in range(len(data))])
    y = torch.tensor([int(data.dataset[i][1]) for i in range(len(data))])
    with torch.no_grad():
        v = torch.stack([branch(x) for branch in model.branches], 1)  # [N, K, C]
    confidence = v.softmax(2)[torch.arange(len(y)), :, y]  # [N, K]
    for c in (0, 8):
        np.testing.assert_allclose(ds.alone_confidence.sel(cls=c).values, confidence[y == c].mean(0).numpy(),
                                   rtol=1e-5)
    true_score = v[torch.arange(len(y)), :, y]
    np.testing.assert_allclose(ds.contribution.values, true_score.numpy(), rtol=1e-5)
    np.testing.assert_array_equal(ds.top_branch.values[:, 0], true_score.argmax(1).numpy())
    assert ds.attrs["mode"] == "classifier"
    np.testing.assert_allclose(ds.top_fraction.sum("branch").values, 1.0)
    assert ((ds.specialization >= 0) & (ds.specialization <= 1)).all()
    assert int(ds.class_count.sum()) == 360


def test_grouped_conv_branches_are_scored_by_their_response_norms(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 6, 3, groups=2), torch.nn.Flatten())
    path = tmp_path / "g.pt"
    torch.save(model, path)
    ds = run_analyses(tmp_path, path, "digits:test", ["specialization"], limit=40, batch_size=16)["specialization"]
    assert ds.attrs["mode"] == "responses" and "alone_confidence" not in ds
    data = load_data("digits:test")
    x = torch.stack([data.dataset[i][0] for i in range(40)])
    y = np.array([int(data.dataset[i][1]) for i in range(40)])
    with torch.no_grad():
        out = model[1](model[0](x)).reshape(40, 2, -1).norm(dim=2).numpy()  # [N, groups]
    for c in np.unique(y)[:3]:
        np.testing.assert_allclose(ds.class_score.sel(cls=c).values, out[y == c].mean(0), rtol=1e-5)
    np.testing.assert_allclose(ds.top_fraction.sum("branch").sel(cls=np.unique(y)).values, 1.0)


def test_needs_classes(tmp_path):
    with pytest.raises(ProbekitError, match="needs data with classes"):
        run_analyses(tmp_path, "toy1", "toy1", ["specialization"])
