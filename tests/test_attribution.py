import numpy as np
import torch
from captum.attr import Saliency

from probekit.run.data import load_data
from probekit.zoo.registry import load_zoo_model
from helpers import run_analyses


def test_class_maps_are_captums_own_per_branch_attributions(tmp_path):
    ds = run_analyses(tmp_path, "digits-branched8", "digits:test", ["attribution"], batch_size=40,
                      options={"attribution": {"method": "saliency", "max_samples": "36", "store": "4"}})["attribution"]
    stride = 360 // 36
    data = load_data("digits:test")
    chosen = list(range(0, 360, stride))
    x = torch.stack([data.dataset[i][0] for i in chosen])
    y = torch.tensor([int(data.dataset[i][1]) for i in chosen])
    model = load_zoo_model("digits-branched8")
    for k in (0, 6):
        maps = Saliency(model.branches[k]).attribute(x.clone().requires_grad_(True), target=y, abs=True)
        heat = maps.abs().sum(1)  # [n, H, W]
        for c in (2, 7):
            np.testing.assert_allclose(ds.class_map.values[k, c], heat[y == c].mean(0).numpy(), rtol=1e-5, atol=1e-7)
    assert int(ds.attributed.sum()) == len(chosen)
    np.testing.assert_array_equal(ds.sample.values, chosen[:4])
    assert ds.attribution.dims == ("sample", "branch", "channel", "y", "x") and ds.attribution.shape[1] == 8
