"""NAD (``probekit experiment nad``): the update step against a float64 transcription, and the sanity properties
of the learnt sub-architectures on a real trained model."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from probekit.models.branches import DiscoveryConfig, discover
from probekit.run.data import load_data
from probekit.zoo.nad import Gates, NadConfig, _quadrant_share, nad_step, run_nad
from probekit.zoo.registry import load_zoo_model

LAYERS = "branches.*.features.1,branches.*.features.3"


def test_one_update_step_matches_a_float64_transcription():
    torch.manual_seed(0)
    model = load_zoo_model("digits-branched8").double().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = load_data("digits:train").dataset.tensors[0][:24].double()
    c, beta, lr = 3, 0.02, 0.1
    paths = ["branches.0.features.1", "branches.5.features.3"]
    gates = Gates(model, paths, [])
    masks = {p: torch.randn(n, dtype=torch.float64).requires_grad_(True)
             for p, n in gates.channels(x[:2]).items()}
    start = {p: m.detach().clone() for p, m in masks.items()}

    # the transcription: plain hooks, the loss written out, the normalised step
    def forward(scale):
        seen = {}

        def hook(path):
            def keep(module, args, out):
                out = out * scale[path].view(1, -1, 1, 1) if scale else out
                seen[path] = out.clone()
                return out
            return keep

        handles = [model.get_submodule(p).register_forward_hook(hook(p)) for p in paths]
        try:
            return model(x), seen
        finally:
            for h in handles:
                h.remove()

    m = {p: v.clone().requires_grad_(True) for p, v in start.items()}
    with torch.no_grad():
        logits0, a = forward(None)
    right = logits0.argmax(1) == c
    assert int(right.sum()) > 0  # the activation-matching term takes part
    logits, a_masked = forward({p: torch.sigmoid(v) for p, v in m.items()})
    mse = sum(((a_masked[p][right] - a[p][right]) ** 2).mean() for p in paths)
    l_act = (F.cross_entropy(logits, torch.full((24,), c)) + mse) / 2
    l_mask = sum(torch.sigmoid(v).pow(2).mean() for v in m.values()) / 2
    total = l_act + beta * l_mask
    grads = torch.autograd.grad(total, list(m.values()))
    expected = {p: start[p] - lr * g / g.norm() for p, g in zip(paths, grads, strict=True)}

    loss, act, mask = nad_step(model, gates, masks, x, c, NadConfig(beta=beta, lr=lr))
    assert loss == pytest.approx(total.item(), rel=1e-12) and act == pytest.approx(l_act.item(), rel=1e-12)
    assert mask == pytest.approx(l_mask.item(), rel=1e-12)
    for p in paths:
        torch.testing.assert_close(masks[p].detach(), expected[p], rtol=1e-10, atol=1e-12)
        assert not torch.equal(masks[p].detach(), start[p])


@pytest.fixture(scope="module")
def trained_masks():
    """NAD on digits-branched8 at three betas (12 epochs of 80 images per class)."""
    model = load_zoo_model("digits-branched8").eval()
    branchset = discover(model, DiscoveryConfig())
    train, test = load_data("digits:train"), load_data("digits:test")
    out = {}
    for beta in (0.0, 0.05, 0.5):
        config = NadConfig(layers=LAYERS, beta=beta, epochs=12, batch_size=16, train_per_class=80,
                           test_per_class=36, mosaics=0, branch_gates=beta == 0.5,
                           permutations=19 if beta == 0.5 else 0, resamples=50 if beta == 0.5 else 0)
        out[beta] = run_nad(model, branchset, train, test, config, progress=False)
    return out


def test_beta_zero_keeps_almost_every_gate_and_the_original_accuracy(trained_masks):
    ds = trained_masks[0.0]
    assert float(ds.kept.mean()) > 0.9
    masked, original = ds.masked_accuracy.values, ds.original_accuracy.values
    np.testing.assert_allclose(np.diag(masked), original, atol=0.03)  # each mask keeps its own class
    assert np.abs(masked - original[None, :]).mean() < 0.02  # and, nearly, every other class


def test_larger_beta_keeps_fewer_gates_and_masks_prefer_their_own_class(trained_masks):
    kept = [float(trained_masks[b].kept.mean()) for b in (0.0, 0.05, 0.5)]
    assert kept[0] > kept[1] > kept[2]
    matrix = trained_masks[0.5].masked_accuracy.values
    off = np.where(np.eye(10, dtype=bool), np.nan, matrix)
    assert (np.diag(matrix) > np.nanmean(off, axis=1)).all()
    ds = trained_masks[0.5]
    assert ds.branch_gate.shape == (10, 8) and ds.kept_branch.shape == (10, 8)
    assert ds.branch_class_score.shape == (10, 8)
    np.testing.assert_allclose(np.diag(ds.similarity.values), 1.0)


def test_masks_bias_toward_their_class_beyond_random_masks_of_the_same_size(trained_masks):
    """At beta 0.5 the masks push the other classes' images toward their class far more than random masks of the
    same size do; their separation (Youden's J) is no better than the random masks' (measured 0.66 and 0.73)."""
    ds = trained_masks[0.5]
    assert float(ds.mean_bias) > float(ds.mean_bias_null) + 0.1  # measured 0.33 against 0.18
    assert float(ds.mean_bias_p) == pytest.approx(1 / 20)  # beyond every one of 19 random masks
    low, high = ds.mean_separation_ci.values
    assert low <= float(ds.mean_separation) <= high
    band = ds.mean_separation_null_band.values
    assert band[0] <= float(ds.mean_separation) <= band[1]  # within the random masks' central 95%
    assert set(ds.separation_p_adjusted.attrs) >= {"correction", "family"} and "random mask" in ds.bias_p.attrs["null"]
    np.testing.assert_allclose(ds.bias.values, [np.delete(row, c).mean() for c, row in
                                                enumerate(ds.predicted_as.values)])
    np.testing.assert_allclose(ds.separation.values, np.diag(ds.predicted_as.values) - ds.bias.values)  # Youden's J
    assert "separation_p" not in trained_masks[0.0]  # permutations=0: no test


def test_quadrant_share_counts_the_top_pixels_in_each_quadrant():
    cam = torch.zeros(8, 8)
    cam[5:, 6:] = 1.0  # bottom-right
    assert _quadrant_share(cam, 3, 6 / 64) == 1.0 and _quadrant_share(cam, 0, 6 / 64) == 0.0
    cam = torch.arange(64.0).view(8, 8)  # the largest values fill the bottom rows
    assert _quadrant_share(cam, 2, 0.25) == pytest.approx(0.5)


def test_cli_on_resnet20_with_mosaics_writes_the_node_and_report(cli, shared_data, tmp_path):
    root = shared_data / "cifar10"
    code, stdout, stderr = cli("experiment", "nad", "--model", "resnet20-cifar10", "--data", f"cifar10:{root}:train",
                               "--test-data", f"cifar10:{root}:test", "--train-per-class", "8", "--test-per-class",
                               "8", "--mosaics", "4", "--epochs", "1", "--permutations", "3",
                               "--out", tmp_path / "nad.zarr", "--report", "--quiet")
    assert code == 0, stderr
    from probekit import open_results

    ds = open_results(tmp_path / "nad.zarr")["nad"].to_dataset()
    assert len(ds.layer) == 10 and np.isfinite(ds.hit_rate.values).all()  # stem + 9 blocks
    assert ((ds.hit_rate_unmasked >= 0) & (ds.hit_rate_unmasked <= 1)).all()
    report = tmp_path / "nad-report"
    assert {"nad-kept.png", "nad-hit-rate.png", "nad-similarity.png", "nad-masked-accuracy.png"} <= \
        {p.name for p in report.iterdir()}


def test_option_form_sets_the_same_fields_and_refuses_unknown_keys():
    from probekit import ProbekitError
    from probekit.zoo.nad import with_options

    config = with_options(NadConfig(), ["nad.layers=branches.*.layer1", "nad.branch_gates=true", "nad.beta=0.05"])
    assert (config.layers, config.branch_gates, config.beta) == ("branches.*.layer1", True, 0.05)
    with pytest.raises(ProbekitError, match="expected nad.KEY=VALUE"):
        with_options(NadConfig(), ["nad.gamma=1"])
    with pytest.raises(ProbekitError, match="is not a float"):
        with_options(NadConfig(), ["nad.beta=big"])


def test_checkpoints_resume_to_the_same_node_and_refuse_other_settings(tmp_path):
    """An interrupted run (here: stopped after class 3's masks were saved) resumes from the saved classes and
    gives the node an uninterrupted run gives; a folder saved under other settings is an error, not reused."""
    from dataclasses import replace

    from probekit import ProbekitError
    from probekit.zoo import nad
    from probekit.zoo.nad_checkpoints import MaskCheckpoints

    model = load_zoo_model("digits-branched8").eval()
    branchset = discover(model, DiscoveryConfig())
    train, test = load_data("digits:train"), load_data("digits:test")
    config = NadConfig(layers=LAYERS, epochs=1, batch_size=16, train_per_class=16, test_per_class=8, mosaics=0,
                       permutations=3, resamples=5)
    whole = run_nad(model, branchset, train, test, config, progress=False)

    def interrupted(model, gates, channels, images, c, config, progress):
        if c == 4:
            raise KeyboardInterrupt
        return learn(model, gates, channels, images, c, config, progress)

    learn = nad.learn_masks
    folder = tmp_path / "masks"
    saved = MaskCheckpoints.for_run(folder, config, "sha", "digits:train")
    nad.learn_masks = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            run_nad(model, branchset, train, test, config, progress=False, checkpoints=saved)
    finally:
        nad.learn_masks = learn
    assert sorted(p.name for p in folder.iterdir()) == [f"class-{c}.pt" for c in range(4)]
    resumed = run_nad(model, branchset, train, test, config, progress=False, checkpoints=saved)
    for name in whole.data_vars:
        np.testing.assert_array_equal(resumed[name].values, whole[name].values, err_msg=name)
    evaluation = replace(config, permutations=5, test_per_class=4, mosaics=2)  # the masks do not depend on these
    assert MaskCheckpoints.for_run(folder, evaluation, "sha", "digits:train").load(0) is not None
    other = MaskCheckpoints.for_run(folder, replace(config, beta=0.5), "sha", "digits:train")
    with pytest.raises(ProbekitError, match="saved by a run with other settings"):
        other.load(0)
    (folder / "class-0.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ProbekitError, match="is not a NAD checkpoint"):
        saved.load(0)
