"""``afhq-cat-bandpass9``: the band-pass baseline of the generator components sums back to its input exactly and
runs through the same analyses as the generators."""

import numpy as np
import torch

from helpers import run_analyses
from probekit.zoo.band_pass import BandPassDecomposition
from probekit.zoo.registry import load_zoo_model


def test_bands_sum_to_the_input_and_split_it_by_scale():
    model = BandPassDecomposition()
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(model(x), x, atol=1e-5, rtol=0)
    bands = torch.stack([band(x) for band in model.branches], 1)  # [N, K, 3, H, W]
    fine = bands[:, 0].abs().mean()
    assert fine > bands[:, -1].abs().mean()  # white noise: its energy is at the finest scale
    big = torch.nn.functional.interpolate(x, size=(128, 128), mode="nearest")
    assert model(big).shape == (2, 3, 64, 64)  # resized to the generators' 64 px


def test_the_zoo_entry_runs_decomposition_like_a_generator(tmp_path):
    assert isinstance(load_zoo_model("afhq-cat-bandpass9"), BandPassDecomposition)
    node = run_analyses(tmp_path, "afhq-cat-bandpass9", "cifar10-sample", ["decomposition"], limit=4)["decomposition"]
    assert node.sizes["branch"] == 9
    assert float(node.psnr.min()) > 60  # f(x) = x (resized): exact up to float32 rounding
    assert np.isfinite(node.component.values).all()
