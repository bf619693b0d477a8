"""The branched generator, the decomposition and chan-vese analyses (paper section 7, appendices E-F)."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from probekit import open_results
from probekit.models.branches import DiscoveryConfig, discover
from probekit_plugins.chan_vese.segmentation import (SCORE, PairRule, RoleChoice, SegmentSettings, choose_roles,
                                       consistent_pairs, sample_prior, segment_eyes, value_images)
from probekit.zoo.generator import BranchedGenerator, gaussian_blur


def test_learnt_diffusion_reconstructs_the_input_exactly():
    torch.manual_seed(0)
    model = BranchedGenerator(branches=4, widths=(4, 8), preprocessing="diffusion", resolution=16).double()
    x = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    r, phis = model.decompose_input(x)
    assert len(phis) == 4 and not torch.allclose(phis[0], phis[1])
    torch.testing.assert_close(r + sum(phis), x, rtol=0, atol=1e-12)


def test_gaussian_preprocessing_blurs_and_feeds_every_branch_the_input():
    model = BranchedGenerator(branches=3, widths=(4, 8), sigma=1.5, resolution=16)
    x = torch.rand(2, 3, 16, 16)
    r, phis = model.decompose_input(x)
    assert all(phi is x for phi in phis)
    torch.testing.assert_close(r, gaussian_blur(x, 1.5))
    assert float(r.std()) < float(x.std())  # smoother
    flat = torch.full((1, 3, 16, 16), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, 2.0), flat)  # the kernel sums to one


def test_generator_is_found_as_summed_branches_and_resizes_inputs():
    model = BranchedGenerator(branches=9, widths=(4, 8), resolution=16)
    (layer,) = discover(model, DiscoveryConfig()).layers
    assert layer.kind == "sum" and len(layer.branches) == 9
    assert model(torch.rand(2, 3, 40, 40)).shape == (2, 3, 16, 16)
    target = model(torch.rand(2, 3, 16, 16), target=torch.tensor([0, 0]))
    assert target.shape == (2, 3, 16, 16)


def disk(h, centre, radius):
    yy, xx = np.mgrid[:h, :h]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def synthetic_components(seed):
    """Three grey components of a 64x64 face: blobs on the eyes and nose (init), a textured image that is
    flat and dark on the eyes (segment), and noise."""
    rng = np.random.default_rng(seed)
    eyes = disk(64, (24, 20), 4) | disk(64, (25, 44), 4)
    nose = disk(64, (42, 32), 3)
    blobs = 0.05 * rng.random((64, 64)) + 1.0 * (eyes | nose)
    flat = np.where(eyes, 0.1, 0.5 + 0.5 * rng.random((64, 64)))
    noise = rng.random((64, 64))
    return np.stack([np.repeat(c[None], 3, axis=0) for c in (noise, blobs, flat)])


def test_roles_and_eye_pair_on_synthetic_components():
    values = np.stack([value_images(synthetic_components(seed)) for seed in range(4)])
    settings = SegmentSettings()
    init, chosen = choose_roles(values, RoleChoice(), settings)
    assert init == [1]  # the blobs, not the noise or the flat texture
    for segment in (chosen, SCORE, [2]):
        result = segment_eyes(values[0], init, segment, sample_prior(values, init, settings.sigma), settings)
        np.testing.assert_allclose(result.centroids, [[24, 20], [25, 44]], atol=1.0)
        assert 2 * 30 <= result.eyes.sum() <= 2 * 120  # eye disks of 49 pixels, give or take the smoothing
    assert choose_roles(values, RoleChoice(), settings, init=[0], segment=[2]) == ([0], [2])  # given: kept
    assert choose_roles(values, RoleChoice(), settings, segment=[2])[0] == [1]


def test_consistent_pairs_counts_pairs_near_their_median():
    pairs = np.array([[[24, 20], [25, 44]], [[25, 21], [25, 43]], [[50, 5], [50, 30]], [[np.nan] * 2] * 2])
    assert consistent_pairs(pairs, tolerance=3.0) == 2
    assert consistent_pairs(np.full((2, 2, 2), np.nan), tolerance=3.0) == 0


def test_no_pair_when_the_region_has_one_blob():
    mask = disk(64, (30, 30), 5)
    from probekit_plugins.chan_vese.segmentation import horizontal_pair

    eyes, centroids = horizontal_pair(mask, PairRule())
    assert not eyes.any() and np.isnan(centroids).all()
    border_pair = disk(64, (61, 20), 4) | disk(64, (61, 44), 4)  # cut by the bottom edge: not eyes
    assert np.isnan(horizontal_pair(border_pair, PairRule())[1]).all()
    assert np.isfinite(horizontal_pair(disk(64, (50, 20), 4) | disk(64, (50, 44), 4), PairRule())[1]).all()


@pytest.fixture()
def tiny_generator(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "gen.pt"
    torch.save(BranchedGenerator(branches=4, widths=(4, 8), resolution=16).eval(), path)
    return path


def test_decomposition_and_chan_vese_through_the_cli(cli, tmp_path, tiny_generator):
    out = tmp_path / "d.zarr"
    code, _, err = cli("run", "--model", tiny_generator, "--data", "random:3,24,24", "--limit", "5",
                       "--batch-size", "2", "--plugins", "decomposition,chan-vese", "--out", out, "--quiet",
                       "--report")
    assert code == 0, err
    tree = open_results(out)
    node = tree["decomposition"]
    np.testing.assert_allclose(float(node.energy_share.sum()), 1.0, rtol=1e-6)
    np.testing.assert_allclose(node.component.sum("branch") + node.residual, node.output, atol=1e-5)
    np.testing.assert_allclose(np.diag(node.correlation.values), 1.0, atol=1e-6)
    assert node.input.shape == (5, 3, 16, 16) and np.isfinite(node.psnr.values).all()
    segmentation = tree["chan-vese"]
    assert segmentation.region.shape == (5, 16, 16) and set(segmentation.role.values) <= {"init", "segment",
                                                                                          "unused"}
    report = tmp_path / "d-report"
    assert {"decomposition-components.png", "decomposition-added.png", "chan-vese-overlays.png"} <= {
        p.name for p in report.glob("*.png")}


def test_bad_roles_and_non_image_models_are_clear_errors(cli, tmp_path, tiny_generator):
    code, _, err = cli("run", "--model", tiny_generator, "--data", "random:3,16,16", "--limit", "2", "--plugins",
                       "chan-vese", "--option", "chan-vese.init=eyes", "--out", tmp_path / "a.zarr", "--quiet")
    assert code == 2 and "chan-vese.init must be one of auto or comma-separated int" in err
    code, _, err = cli("run", "--model", "digits-branched8", "--data", "digits:test", "--limit", "4", "--plugins",
                       "decomposition", "--out", tmp_path / "b.zarr", "--quiet")
    assert code == 1 and "decomposition needs a model that outputs images" in err


def test_target_class_transfers_every_input_to_the_named_class(cli, tmp_path):
    """The bundled celeba-branched9 probed as female re-generation and as female -> male transfer."""
    outputs = {}
    for target in ("female", "male"):
        out = tmp_path / f"{target}.zarr"
        code, _, err = cli("run", "--model", "celeba-branched9", "--data", "random:3,64,64", "--limit", "2",
                           "--plugins", "decomposition", "--target-class", target, "--out", out, "--quiet")
        assert code == 0, err
        outputs[target] = open_results(out)["decomposition"].output.values
    assert np.abs(outputs["female"] - outputs["male"]).mean() > 1e-3
    code, _, err = cli("run", "--model", "celeba-branched9", "--data", "random:3,64,64", "--limit", "2",
                       "--plugins", "decomposition", "--target-class", "cat", "--out", tmp_path / "c.zarr")
    assert code == 2 and "unknown target class 'cat'; this generator's classes: female, male" in err
    code, _, err = cli("run", "--model", "digits-branched8", "--data", "digits:test", "--limit", "2", "--plugins",
                       "activity", "--target-class", "male", "--out", tmp_path / "d.zarr")
    assert code == 2 and "--target-class needs a class-conditional generator" in err
    assert not (tmp_path / "c.zarr").exists() and not (tmp_path / "d.zarr").exists()


def image_tree(root, classes, per_class, size=20, seed=0, prefix=""):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{prefix}{c}{i}.png")


def test_gan_training_resumes_to_the_same_weights_and_reports_fidelity(tmp_path, monkeypatch):
    from probekit.zoo import gan_training
    from probekit.zoo.gan_training import GanRecipe, train_gan

    image_tree(tmp_path / "data" / "train", ["female", "male"], 4)
    image_tree(tmp_path / "data" / "test", ["female", "male", "other"], 2, seed=1, prefix="t")
    image_tree(tmp_path / "data" / "test-dup", ["female"], 1)  # same file name as a training image
    recipe = GanRecipe(train="train", held_out="test", branches=2, resolution=16, widths=(4, 8), iterations=4,
                       batch_size=4, checkpoint_every=2)
    straight, config, metrics = train_gan(recipe, str(tmp_path / "data"), tmp_path / "a", resume=False,
                                          progress=False)
    assert config["classes"] == 2 and metrics["held_out_images"] == 4  # "other" is not a training class
    assert np.isfinite(metrics["psnr_db"]) and len(metrics["history"]) == 2
    assert (tmp_path / "a" / "samples-000004.png").is_file()
    with pytest.raises(Exception, match="no images of classes"):
        gan_training.held_out_set(GanRecipe(train="train", held_out="test-dup"), tmp_path / "data", ["female"])

    calls, step = [], gan_training.gan_step

    def crash_after_three(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return step(*args)

    monkeypatch.setattr(gan_training, "gan_step", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        train_gan(recipe, str(tmp_path / "data"), tmp_path / "b", resume=False, progress=False)
    monkeypatch.setattr(gan_training, "gan_step", step)
    with pytest.raises(Exception, match="pass --resume"):
        train_gan(recipe, str(tmp_path / "data"), tmp_path / "b", resume=False, progress=False)
    resumed, _, _ = train_gan(recipe, str(tmp_path / "data"), tmp_path / "b", resume=True, progress=False)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a finished shorter run extended with more iterations is the same run as the longer one trained straight
    train_gan(replace(recipe, iterations=2), str(tmp_path / "data"), tmp_path / "c", resume=False, progress=False)
    with pytest.raises(Exception, match="other settings"):
        train_gan(replace(recipe, lr=2e-4), str(tmp_path / "data"), tmp_path / "c", resume=True, progress=False)
    extended, _, _ = train_gan(recipe, str(tmp_path / "data"), tmp_path / "c", resume=True, progress=False)
    for a, b in zip(straight.state_dict().values(), extended.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
