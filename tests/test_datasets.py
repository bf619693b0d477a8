import pickle

import numpy as np
import pytest
import torch

from probekit import ProbekitError
from probekit.run.data import load_data


def test_toy_points_are_the_papers():
    data = load_data("toy1")
    xs = [float(data.dataset[i][0]) for i in range(4)]
    ys = [float(data.dataset[i][1]) for i in range(4)]
    assert (xs, ys) == ([-1, 0, 0, 1], [1, 0.5, 0.5, 1])
    toy2 = load_data("toy2")
    assert [float(toy2.dataset[i][1]) for i in range(4)] == [1, 0.25, 0.5, 0.75]


def test_digits_splits_partition_the_set():
    train, test, everything = load_data("digits:train"), load_data("digits:test"), load_data("digits")
    assert len(train) + len(test) == len(everything) == 1797
    assert not set(train.sample_ids) & set(test.sample_ids)
    x, y = test.dataset[0]
    assert x.shape == (1, 8, 8) and 0 <= float(x.max()) <= 1 and test.classes[int(y)] == str(int(y))


def test_random_samples_do_not_depend_on_batching():
    data = load_data("random:3,4,4", seed=7)
    whole = next(iter(data.loader(batch_size=6, limit=6)))[1]
    halves = torch.cat([b[1] for b in data.loader(batch_size=4, limit=6)])
    torch.testing.assert_close(whole, halves)
    assert not data.has_targets


@pytest.mark.parametrize("spec", ["random:", "random:3,x", "random:0,2", "nope:1", "digits:val"])
def test_bad_data_specs(spec):
    with pytest.raises(ProbekitError):
        load_data(spec)


def test_cifar10_imagefolder_layout(shared_data):
    data = load_data(f"cifar10:{shared_data / 'cifar10'}")
    assert len(data) == 10_000 and data.classes[0] == "airplane"
    x, y = data.dataset[0]
    assert x.shape == (3, 32, 32) and data.sample_ids[0].startswith("airplane/")


def test_cifar10_official_python_batches(tmp_path, monkeypatch):
    """The real ``cifar-10-batches-py`` format, written here with a few images."""
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 3072), dtype=np.uint8)
    labels = [0, 1, 2, 3, 9]
    with open(root / "test_batch", "wb") as f:
        pickle.dump({"data": images, "labels": labels}, f)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names}, f)
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda *args: True)  # hand-made files lack the official md5s
    data = load_data(f"cifar10:{tmp_path}")
    x, y = data.dataset[4]
    assert len(data) == 5 and int(y) == 9 and data.classes[9] == "truck"
    assert abs(float(x[0, 0, 0]) - images[4, 0] / 255.0) < 1e-6


def test_imagefolder(shared_data):
    data = load_data(f"imagefolder:{shared_data / 'samples' / 'afhq'}")
    assert data.classes == ["cat", "dog", "wild"] and len(data) == 65


def test_missing_folders_are_errors(tmp_path):
    with pytest.raises(ProbekitError, match="not found"):
        load_data(f"imagefolder:{tmp_path / 'absent'}")
    with pytest.raises(ProbekitError, match="no CIFAR-10"):
        load_data(f"cifar10:{tmp_path}")
