"""The branched generator, the decomposition and chan-vese analyses (paper section 7, appendices E-F)."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from probekit import open_results
from probekit.models.branches import DiscoveryConfig, discover
from probekit_plugins.chan_vese.segmentation import (SCORE, PairRule, RoleChoice, SegmentSettings, choose_roles,
                                                     consistent_pairs, horizontal_pair, init_score, sample_prior,
                                                     segment_eyes)
from probekit.zoo.generator import BranchedGenerator, gaussian_blur


def test_learnt_diffusion_reconstructs_the_input_exactly():
    torch.manual_seed(0)
    model = BranchedGenerator(branches=4, widths=(4, 8), preprocessing="diffusion", resolution=16).double()
    x = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    r, phis = model.decompose_input(x)
    assert len(phis) == 4 and not torch.allclose(phis[0], phis[1])
    torch.testing.assert_close(r + sum(phis), x, rtol=0, atol=1e-12)


@torch.no_grad()
def test_learnt_diffusion_always_smooths_and_never_leaves_the_input_range():
    """Whatever the CNN's weights, c stays in its bounds: ten steps keep u within the input's range, never
    raise its gradient energy, leave flat images flat, and keep R away from x (no R = x shortcut)."""
    torch.manual_seed(0)
    model = BranchedGenerator(branches=9, widths=(4, 8), preprocessing="diffusion", resolution=32).double()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)

    def gradient_energy(u):
        return float((u.diff(dim=-1) ** 2).sum() + (u.diff(dim=-2) ** 2).sum())

    for scale in (1.0, 50.0, -50.0):  # the learnt conductivity near its middle, its top and its floor
        for conv in model.diffusion.net[::2]:
            conv.weight.mul_(abs(scale))
            conv.bias.fill_(scale)
        c = model.diffusion.conductivity(x)
        assert model.diffusion.min_conductivity <= float(c.min()) and float(c.max()) <= model.diffusion.max_conductivity
        u, energies = x, [gradient_energy(x)]
        for _ in range(10):
            u = u - model.tau * model.diffusion(u)
            energies.append(gradient_energy(u))
        assert float(u.min()) >= float(x.min()) - 1e-12 and float(u.max()) <= float(x.max()) + 1e-12
        assert all(b <= a for a, b in zip(energies, energies[1:], strict=False))
        r, phis = model.decompose_input(x)
        assert float((r - x).norm()) > 0.1 * float((x - x.mean()).norm())  # the branches get a real share
        torch.testing.assert_close(r + sum(phis), x, rtol=0, atol=1e-10)
    flat = torch.full((1, 3, 32, 32), 0.4, dtype=torch.float64)
    assert float(model.diffusion(flat).abs().max()) == 0.0


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


def synthetic_components(seed, shift=(0, 0)):
    """Three grey components ``[3, 3, 64, 64]`` of a face whose eyes sit at (24, 20) and (25, 44) moved by
    ``shift`` (rows, columns): blobs on the eyes and nose (init), a textured image that is flat and dark on the
    eyes (segment), and noise."""
    rng = np.random.default_rng(seed)
    dy, dx = shift
    eyes = disk(64, (24 + dy, 20 + dx), 4) | disk(64, (25 + dy, 44 + dx), 4)
    nose = disk(64, (42 + dy, 32 + dx), 3)
    blobs = 0.05 * rng.random((64, 64)) + 1.0 * (eyes | nose)
    flat = np.where(eyes, 0.1, 0.5 + 0.5 * rng.random((64, 64)))
    noise = rng.random((64, 64))
    return np.stack([np.repeat(c[None], 3, axis=0) for c in (noise, blobs, flat)])


SHIFTS = [(0, 0), (-10, 8), (12, -9), (5, 10)]


def test_roles_and_eye_pair_follow_faces_that_move():
    """Faces at four positions: the roles come from the eyes' spacing, not their place, and each pair is found
    where that face's eyes are."""
    parts = np.stack([synthetic_components(seed, shift) for seed, shift in enumerate(SHIFTS)])
    settings = SegmentSettings()
    init, chosen = choose_roles(parts, RoleChoice(), settings)
    assert init == [1]  # the blobs, not the noise or the flat texture
    for segment in (chosen, SCORE, [2]):
        for sample, (dy, dx) in zip(parts, SHIFTS, strict=True):
            result = segment_eyes(sample, init, segment, None, settings)
            np.testing.assert_allclose(result.centroids, [[24 + dy, 20 + dx], [25 + dy, 44 + dx]], atol=1.0)
            assert 2 * 30 <= result.eyes.sum() <= 2 * 120  # eye disks of 49 pixels, give or take the smoothing
    assert choose_roles(parts, RoleChoice(), settings, init=[0], segment=[2]) == ([0], [2])  # given: kept
    assert choose_roles(parts, RoleChoice(), settings, segment=[2])[0] == [1]


def test_the_position_prior_is_the_mean_score():
    parts = np.stack([synthetic_components(seed, shift) for seed, shift in enumerate(SHIFTS)])
    prior = sample_prior(parts, [1], 3.0)
    assert prior.min() == 0 and prior.max() == 1
    scores = np.stack([init_score(p, [1], 3.0) for p in parts]).mean(0)
    np.testing.assert_allclose(prior, (scores - scores.min()) / (scores.max() - scores.min()))


def test_consistent_pairs_counts_offsets_near_their_median():
    pairs = np.array([[[24, 20], [25, 44]], [[35, 1], [35, 26]], [[50, 5], [50, 50]], [[np.nan] * 2] * 2])
    assert consistent_pairs(pairs, tolerance=3.0) == 2  # the first two have one spacing wherever they are
    assert consistent_pairs(np.full((2, 2, 2), np.nan), tolerance=3.0) == 0


def test_a_pair_needs_two_peaks_on_one_row_at_a_plausible_distance():
    from scipy.ndimage import gaussian_filter

    def score(*centres):
        return gaussian_filter(sum(disk(64, c, 3).astype(float) for c in centres), 2.0)

    rule = PairRule()
    assert len(horizontal_pair(score((30, 30)), 12, rule)) == 0  # one blob
    np.testing.assert_array_equal(horizontal_pair(score((30, 40), (31, 15)), 12, rule), [[31, 15], [30, 40]])
    assert len(horizontal_pair(score((10, 20), (40, 44)), 12, rule)) == 0  # not on one row
    assert len(horizontal_pair(score((30, 4), (30, 60)), 12, rule)) == 0  # farther apart than 0.6 W
    assert len(horizontal_pair(score((30, 30), (30, 33)), 12, rule)) == 0  # closer than 0.12 W


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


@pytest.mark.timeout(300)  # it trains: a hung kernel fails it with its stack
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
    # a checkpoint resumed at its own iteration writes its averaged generator as it is; fewer is refused
    exported, _, again = train_gan(recipe, str(tmp_path / "data"), tmp_path / "c", resume=True, progress=False)
    assert again["iterations"] == 4 and len(again["history"]) == 2
    for a, b in zip(straight.state_dict().values(), exported.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(Exception, match="at iteration 4, past --iterations 2; pass --iterations 4"):
        train_gan(replace(recipe, iterations=2), str(tmp_path / "data"), tmp_path / "c", resume=True, progress=False)


@torch.no_grad()
def test_bundled_diffusion_generator_splits_held_out_cats_into_nine_real_components(shared_data):
    """``afhq-cat-diffusion9`` on the sample cats it was not trained on: x = R + sum phi exactly, the learnt
    conductivity within its bounds, R clearly not x (no R = x collapse), every component with a real share of
    the energy, and a faithful re-generation."""
    from probekit.models.loading import load_model
    from probekit.zoo.gan_training import GanRecipe, held_out_set, regeneration_fidelity
    from probekit.zoo.training import GENERATORS

    images, labels = held_out_set(GanRecipe(**GENERATORS["afhq-cat-diffusion9"]), shared_data, ["cat"])
    assert len(images) >= 8
    model = load_model("afhq-cat-diffusion9").module
    x = images.float() / 255
    r, phis = model.decompose_input(x)
    torch.testing.assert_close(r + sum(phis), x, rtol=0, atol=1e-4)
    c = model.diffusion.conductivity(x)
    assert 1.0 <= float(c.min()) and float(c.max()) <= 2.5
    assert float(-10 * torch.log10(((r.clamp(0, 1) - x) ** 2).mean())) < 35  # measured 29.9 dB: R is a smoothed x
    s = model.styles(labels)
    energy = torch.stack([(branch(phi, s) ** 2).sum() for branch, phi in zip(model.branches, phis, strict=True)])
    assert float((energy / energy.sum()).min()) > 0.02  # all nine branches active
    assert regeneration_fidelity(model, images, labels)["psnr_db"] > 26  # measured 29.07 dB on these 18 cats
