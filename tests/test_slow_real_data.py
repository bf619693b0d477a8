"""Slower end-to-end runs on the real shared data (``make test-slow``)."""

import numpy as np
import pytest
import torch
import torchvision

from helpers import run_analyses

pytestmark = pytest.mark.slow


def test_full_cifar10_test_split_through_a_grouped_cifar_model(tmp_path, shared_data):
    torch.manual_seed(0)
    path = tmp_path / "resnext.pt"
    torch.save(torchvision.models.resnext50_32x4d(num_classes=10), path)
    tree = run_analyses(tmp_path, path, f"cifar10:{shared_data / 'cifar10'}", ["activity", "covariance"],
                        batch_size=250)
    activity, covariance = tree["activity"], tree["covariance"]
    assert activity.sizes == {"sample": 10_000, "branch": 512, "layer": 16, "cls": 10}
    assert activity.sample_id.values[0].startswith("airplane/")
    per_sample = activity.response_norm.values.astype(np.float64)
    np.testing.assert_allclose(np.sqrt((per_sample ** 2).sum(0)), activity.norm.values, rtol=1e-4)
    np.testing.assert_allclose(np.diag(covariance.cov.values), activity.norm.values ** 2 / 10_000, rtol=1e-4)
