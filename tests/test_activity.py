import numpy as np
import pytest
import torch
from torch import nn

from probekit import SummedBranches
from helpers import run_analyses


def scaled(scale: float) -> nn.Linear:
    """A branch whose response is ``scale * x``: a linear layer with weight ``scale * I``."""
    layer = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        layer.weight.copy_(scale * torch.eye(4))
    return layer


@pytest.fixture
def scaled_model(tmp_path):
    path = tmp_path / "scaled.pt"
    torch.save(SummedBranches([scaled(s) for s in (1.0, 0.5, 0.11, 0.09, 0.0)]), path)
    return path


def test_ten_percent_rule(tmp_path, scaled_model):
    ds = run_analyses(tmp_path, scaled_model, "random:4", ["activity"], limit=50, batch_size=8)["activity"]
    np.testing.assert_allclose(ds.relative_norm.values, [1.0, 0.5, 0.11, 0.09, 0.0], rtol=1e-5)
    assert ds.active.values.tolist() == [True, True, True, False, False]
    assert int(ds.active_count.sel(layer="model")) == 3 and int(ds.silent_count.sel(layer="model")) == 2
    norms = ds.response_norm.values  # per sample: |scale| * |x|
    np.testing.assert_allclose(norms[:, 1], 0.5 * norms[:, 0], rtol=1e-5)
    np.testing.assert_allclose(np.sqrt((norms.astype(float) ** 2).sum(0)), ds.norm.values, rtol=1e-5)


def test_threshold_option(tmp_path, scaled_model):
    ds = run_analyses(tmp_path, scaled_model, "random:4", ["activity"], limit=20,
                      options={"activity": {"threshold": "0.6"}})["activity"]
    assert ds.active.values.tolist() == [True, False, False, False, False]
    assert ds.attrs["threshold"] == 0.6


def test_per_class_breakdown_matches_per_sample_norms(tmp_path):
    tree = run_analyses(tmp_path, "digits-branched8", "digits:test", ["activity"], batch_size=37)
    ds = tree["activity"]
    assert list(ds.class_name.values) == [str(d) for d in range(10)]
    for c in (0, 7):
        members = ds.response_norm.values[ds.target.values == c].astype(float)
        np.testing.assert_allclose(np.sqrt((members ** 2).sum(0)), ds.class_norm.sel(cls=c).values, rtol=1e-4)
    assert ds.sample_id.values[0] == "0"


def test_grouped_layers_are_judged_within_their_layer(tmp_path, tiny_grouped):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_grouped, path)
    ds = run_analyses(tmp_path, path, "random:3,8,8", ["activity"], limit=10, branches=None,
                      load=_trust())["activity"]
    assert ds.sizes["branch"] == 4 and float(ds.relative_norm.max()) == 1.0


def _trust():
    from probekit.models.loading import LoadOptions

    return LoadOptions(trust_pickle=True)  # TinyGrouped is a test-module class, not on the safe list


def test_class_dispatch_entropy_is_h_of_the_class_given_the_expert(tmp_path):
    """On the routed digits mixture: ``H(class | expert)`` from the stored gates and targets, written out, and
    far below the classes-shuffled null (each expert's traffic is class-specific)."""
    import math

    tree = run_analyses(tmp_path, "digits-moe8", "digits:test", ["activity"],
                        options={"activity": {"permutations": "99", "resamples": "20"}})
    ds = tree["activity"].to_dataset()
    chosen, labels = ds.gate.values.argmax(1), ds.target.values
    n = len(labels)
    expected = 0.0
    for m in set(chosen.tolist()):
        mine = labels[chosen == m]
        for c in set(mine.tolist()):
            share = (mine == c).mean()
            expected -= len(mine) / n * share * math.log(share)
    assert float(ds.class_dispatch_entropy.item()) == pytest.approx(expected, rel=1e-12)
    assert float(ds.class_dispatch_entropy.item()) < float(ds.class_dispatch_entropy_null_band.sel(bound="low").item())
    assert float(ds.class_dispatch_entropy_p.item()) == pytest.approx(0.01)
