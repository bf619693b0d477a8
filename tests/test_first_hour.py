"""A user's own model, first hour (issue 19's pitfalls): default data, predicted targets, class-balanced and
shuffled order, needs checked before the costly work, mismatched channels and label spaces, huge implicit sizes,
and `probekit plugins NAME`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from probekit import open_results
from probekit.run.data import load_data


def test_the_bundled_sample_is_interleaved_by_class():
    data = load_data("cifar10-sample")
    labels = [int(data.dataset[i][1]) for i in range(20)]
    assert labels[:10] == list(range(10)) and labels[10:] == list(range(10))


def test_shuffle_is_seeded_and_keeps_ids_with_their_samples():
    data = load_data("cifar10-sample")
    a, b, c = data.shuffled(1), data.shuffled(1), data.shuffled(2)
    assert list(a.sample_ids) == list(b.sample_ids) != list(c.sample_ids)
    position = list(data.sample_ids).index(a.sample_ids[0])
    torch.testing.assert_close(a.dataset[0][0], data.dataset[position][0])


def test_run_shuffle_flag_changes_the_order_and_says_so(cli, tmp_path):
    code, stdout, err = cli("run", "--model", "digits-branched8", "--data", "digits:test", "--limit", "20",
                            "--shuffle", "--seed", "3", "--plugins", "activity", "--out", tmp_path / "s.zarr",
                            "--quiet")
    assert code == 0, err
    ids = open_results(tmp_path / "s.zarr")["activity"].sample_id.values
    assert list(ids) != [str(i) for i in range(20)] and "shuffled with seed 3" in stdout


def test_no_data_probes_the_bundled_sample_at_the_size_the_model_accepts_with_predicted_targets(cli, tmp_path):
    path = tmp_path / "my_net.pt"
    torch.save(torchvision.models.squeezenet1_1(), path)
    code, stdout, err = cli("run", "--model", path, "--plugins", "activity,specialization", "--batch-size", "16",
                            "--branches", "features.3.expand*", "--out", tmp_path / "r.zarr", "--quiet")
    assert code == 0, err
    tree = open_results(tmp_path / "r.zarr")
    size = int(tree.attrs["dataset"].split(":")[1])
    assert size in (32, 64, 96) and tree["activity"].sizes["sample"] == 64  # the smallest size squeezenet takes
    assert tree.attrs["targets"] == "model predictions (argmax of the output)"
    note = next(line for line in stdout.splitlines() if line.startswith("note:"))
    assert f"at {size}x{size}" in note and "the model's own predicted classes" in note
    assert "10 classes do not match the model's 1000 outputs" in note


def test_needs_are_checked_before_the_costly_work(cli, tmp_path):
    code, _, err = cli("run", "--model", "toy2", "--data", "random:1", "--limit", "4", "--plugins", "hessian",
                       "--option", "hessian.max_memory=1KiB", "--out", tmp_path / "h.zarr", "--quiet")
    assert code == 2 and "hessian needs targets" in err and "max_memory" not in err
    code, _, err = cli("run", "--model", "toy2", "--data", "toy2", "--plugins", "specialization",
                       "--out", tmp_path / "s.zarr", "--quiet")
    assert code == 2 and "specialization needs data with classes" in err


@pytest.mark.parametrize("model, data", [("digits-branched8", "cifar10-sample"), ("torchvision:resnet18", "digits")])
def test_images_with_the_wrong_channel_count_are_refused(cli, tmp_path, model, data):
    code, _, err = cli("run", "--model", model, "--data", data, "--limit", "4", "--plugins", "activity",
                       "--out", tmp_path / "c.zarr", "--quiet")
    assert code == 2 and "-channel images but the model's first conv takes" in err


def test_random_data_without_a_limit_warns(cli, tmp_path):
    with pytest.warns(UserWarning, match="without --limit means 100,000 samples"):
        from probekit.run.runner import RunSpec, _choose_data

        _choose_data(RunSpec(model="toy2", data="random:1", plugins=["activity"], out=str(tmp_path / "x")), None)


def test_plugins_name_describes_an_analysis(cli):
    code, stdout, _ = cli("plugins", "hessian")
    assert code == 0 and stdout.startswith("hessian (plugin hessian): exact loss Hessian")
    assert "hessian.max_memory: str (default '4GiB')" in stdout and "needs: data with targets" in stdout
    code, _, err = cli("plugins", "nonsense")
    assert code == 2 and "unknown analysis 'nonsense'" in err


def test_run_help_shows_defaults_the_sample_and_the_analyses(cli, capsys):
    with pytest.raises(SystemExit):
        cli("run", "--help")
    out = capsys.readouterr().out
    assert "(default: 64)" in out and "cifar10-sample" in out and "covariance" in out and "hessian" in out


def test_labels_that_fit_are_kept(cli, tmp_path):
    code, stdout, err = cli("run", "--model", "cifar10-branched16", "--limit", "20", "--plugins", "activity",
                            "--out", tmp_path / "l.zarr", "--quiet")
    assert code == 0, err
    tree = open_results(tmp_path / "l.zarr")
    assert tree.attrs["targets"] == "data labels" and tree.attrs["dataset"] == "cifar10-sample"
    np.testing.assert_array_equal(tree["activity"].target.values[:10], np.arange(10))


def test_a_redirected_log_gets_no_progress_bar_escape_codes(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    probekit = str(Path(sys.executable).with_name("probekit"))
    result = subprocess.run([probekit, "run", "--model", "digits-branched8", "--data", "digits:test", "--limit",
                             "40", "--batch-size", "8", "--plugins", "activity", "--out", tmp_path / "r.zarr"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "\x1b" not in result.stderr and "\r" not in result.stderr, result.stderr


def test_mixed_image_sizes_can_be_resized(cli, tmp_path):
    from PIL import Image

    folder = tmp_path / "mixed" / "cls"
    folder.mkdir(parents=True)
    for i, size in enumerate([(16, 16), (20, 12), (9, 30)]):
        Image.fromarray(np.full((size[1], size[0], 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    spec = f"imagefolder:{tmp_path / 'mixed'}"
    code, _, err = cli("run", "--model", "torchvision:resnet18", "--data", spec, "--plugins", "activity",
                       "--branches", "layer1.*", "--out", tmp_path / "a.zarr", "--quiet")
    assert code == 2 and "resize them with imagefolder:PATH:SIZE" in err
    code, _, err = cli("run", "--model", "torchvision:resnet18", "--data", f"{spec}:32", "--plugins", "activity",
                       "--branches", "layer1.*", "--out", tmp_path / "b.zarr", "--quiet")
    assert code == 0, err
    assert open_results(tmp_path / "b.zarr")["activity"].sizes["sample"] == 3


def test_labels_of_another_label_space_are_kept_with_a_warning(cli, tmp_path):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / "pets" / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (32, 32), (40 * i, 90, 20)).save(tmp_path / "pets" / cls / f"{i}.png")
    with pytest.warns(UserWarning, match="has 2 classes but the model outputs 1000 scores"):
        code, _, err = cli("run", "--model", "torchvision:resnet18", "--data", f"imagefolder:{tmp_path / 'pets'}",
                           "--plugins", "activity", "--branches", "layer1.*", "--out", tmp_path / "w.zarr", "--quiet")
    assert code == 0, err
    assert open_results(tmp_path / "w.zarr").attrs["targets"] == "data labels"


def test_the_bundled_sample_means_the_same_named_or_chosen(cli, tmp_path):
    """Naming the data the run would choose must not turn CIFAR labels into ImageNet classes."""
    for name, data in (("chosen", ()), ("named", ("--data", "cifar10-sample:32"))):
        code, _, err = cli("run", "--model", "torchvision:resnet18", *data, "--limit", "4", "--plugins", "activity",
                           "--branches", "layer1.*", "--out", tmp_path / f"{name}.zarr", "--quiet")
        assert code == 0, err
        assert open_results(tmp_path / f"{name}.zarr").attrs["targets"] == "model predictions (argmax of the output)"


def test_an_imagenet_head_is_probed_at_224_and_unseen_classes_are_unknown(cli, tmp_path):
    code, out, err = cli("run", "--model", "torchvision:resnet18", "--limit", "4", "--plugins", "activity",
                         "--branches", "layer1.*", "--out", tmp_path / "i.zarr", "--quiet")
    assert code == 0, err
    tree = open_results(tmp_path / "i.zarr")
    assert "cifar10-sample:224" in tree.attrs["note"] and "1,000-class head" in tree.attrs["note"]
    activity = tree["activity"]
    count = activity["class_count"].values
    assert count.sum() == 4 and (count > 0).sum() <= 4
    unseen = count == 0
    assert np.isnan(activity["class_active"].values[unseen]).all()  # no sample: unknown, not silent
    assert np.isfinite(activity["class_active"].values[~unseen]).all()


def test_the_class_figure_draws_only_the_classes_probed(cli, tmp_path):
    from probekit_plugins.activity.plot import MAX_CLASS_ROWS, class_heatmaps

    code, _, err = cli("run", "--model", "torchvision:resnet18", "--data", "cifar10-sample:32", "--limit", "40",
                       "--plugins", "activity", "--branches", "layer1.*", "--out", tmp_path / "c.zarr", "--quiet")
    assert code == 0, err
    ds = open_results(tmp_path / "c.zarr")["activity"].to_dataset()
    figure = class_heatmaps(ds)
    rows = len(figure.axes[0].get_yticks())
    assert rows == min(MAX_CLASS_ROWS, int((ds["class_count"].values > 0).sum())) < 1000
    assert "classes" in figure.get_suptitle()
