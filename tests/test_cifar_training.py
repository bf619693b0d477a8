"""The cifar10-branched16 recipe end to end on a few real CIFAR-10 images: train, checkpoint, resume."""

import shutil

import pytest
import torch

from probekit import ProbekitError

from probekit.zoo.cifar_training import CifarRecipe, augment, train_cifar

pytestmark = pytest.mark.timeout(300)  # these tests train: a hung kernel fails them with its stack


def tiny_cifar(shared_data, tmp_path, per_class=4):
    """A real ImageFolder CIFAR-10 with ``per_class`` images per class and split."""
    root = tmp_path / "cifar"
    for split in ("train", "test"):
        for folder in sorted((shared_data / "cifar10" / split).iterdir()):
            (root / split / folder.name).mkdir(parents=True)
            for image in sorted(folder.iterdir())[:per_class]:
                shutil.copy(image, root / split / folder.name / image.name)
    return root


def test_an_interrupted_run_resumes_to_the_same_weights(shared_data, tmp_path, monkeypatch):
    from probekit.zoo import cifar_training

    root = tiny_cifar(shared_data, tmp_path)
    recipe = CifarRecipe(branches=2, epochs=2, batch_size=16)
    straight, _, metrics = train_cifar(recipe, str(root), tmp_path / "a", resume=False, progress=False)
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]

    real_accuracy, calls = cifar_training.accuracy, []

    def dies_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed before epoch 2 was checkpointed
        return real_accuracy(*args, **kwargs)

    monkeypatch.setattr(cifar_training, "accuracy", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train_cifar(recipe, str(root), tmp_path / "b", resume=False, progress=False)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(cifar_training, "accuracy", real_accuracy)
    with pytest.raises(ProbekitError, match="--resume"):
        train_cifar(recipe, str(root), tmp_path / "b", resume=False, progress=False)
    resumed, _, again = train_cifar(recipe, str(root), tmp_path / "b", resume=True, progress=False)
    assert [h["epoch"] for h in again["history"]] == [1, 2]
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_augment_keeps_shape_and_range():
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    out = augment(images, torch.Generator().manual_seed(0))
    assert out.shape == (5, 3, 32, 32) and 0 <= float(out.min()) and float(out.max()) <= 1


def test_a_fine_tune_starts_from_the_given_weights(shared_data, tmp_path):
    root = tiny_cifar(shared_data, tmp_path, per_class=2)
    first, config, metrics = train_cifar(CifarRecipe(branches=2, epochs=1, batch_size=16), str(root),
                                         tmp_path / "a", resume=False, progress=False)
    weights = tmp_path / "first.pt"
    torch.save({"config": config, "state_dict": first.state_dict(), "metrics": metrics}, weights)
    tuned, _, _ = train_cifar(CifarRecipe(branches=2, epochs=1, batch_size=16, max_lr=1e-12, init_from=str(weights)),
                              str(root), tmp_path / "b", resume=False, progress=False)
    heads = [name for name in first.state_dict() if name.endswith("linear.weight")]
    assert heads and all(float(first.state_dict()[name].abs().sum()) > 0 for name in heads)  # not the zero init
    for name in heads:  # a vanishing learning rate leaves the starting weights where they were
        torch.testing.assert_close(tuned.state_dict()[name], first.state_dict()[name], rtol=0, atol=1e-6)
    switched, switched_config, _ = train_cifar(
        CifarRecipe(branches=2, epochs=1, batch_size=16, max_lr=1e-12, scheme="logits", init_from=str(weights)),
        str(root), tmp_path / "e", resume=False, progress=False)  # a fine-tune may change the scheme
    assert switched_config["clamp"] is False and switched.clamp is False
    torch.testing.assert_close(switched.state_dict()[heads[0]], first.state_dict()[heads[0]], rtol=0, atol=1e-6)
    with pytest.raises(ProbekitError, match="has config"):
        train_cifar(CifarRecipe(branches=3, epochs=1, init_from=str(weights)), str(root), tmp_path / "c",
                    resume=False, progress=False)
    with pytest.raises(ProbekitError, match="no such file"):
        train_cifar(CifarRecipe(branches=2, epochs=1, init_from=str(tmp_path / "nope.pt")), str(root),
                    tmp_path / "d", resume=False, progress=False)
