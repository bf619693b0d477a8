"""The classifier analyses run unchanged on grouped-conv branches over an image folder (responses mode)."""

import numpy as np
import torch
import torchvision

from probekit import open_results


def test_resnext_style_model_on_an_image_folder(cli, tmp_path, shared_data):
    torch.manual_seed(0)
    # ResNeXt's own class with 4 groups of width 4: small, still grouped
    model = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [3, 4, 6, 3], num_classes=3,
                                             groups=4, width_per_group=4)
    path = tmp_path / "resnext.pt"
    torch.save(model, path)
    out = tmp_path / "r.zarr"
    code, _, err = cli("run", "--model", path, "--data", f"imagefolder:{shared_data / 'samples' / 'afhq'}",
                       "--plugins", "activity,covariance,specialization,intra-class", "--limit", "12",
                       "--batch-size", "6", "--out", out, "--quiet", "--report")
    assert code == 0, err
    tree = open_results(out)
    spec, intra = tree["specialization"], tree["intra-class"]
    assert spec.attrs["mode"] == "responses" and intra.attrs["mode"] == "responses"
    assert spec.sizes["branch"] == tree["activity"].sizes["branch"] == 16 * 4
    assert list(spec.class_name.values) == ["cat", "dog", "wild"]
    assert intra.thumbnail.shape[1:] == (3, 64, 64)  # 256-px inputs shrunk for the report
    assert np.isfinite(spec.specialization.values).all()
    assert (tmp_path / "r-report" / "intra-class-class-0.png").is_file()
