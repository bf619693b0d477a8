import json
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from helpers import run_analyses


def test_read_results_example_runs_on_a_real_store(tmp_path):
    run_analyses(tmp_path, "toy2", "toy2", ["activity", "covariance"])
    store = next(tmp_path.glob("*.zarr"))
    result = subprocess.run([sys.executable, str(REPO / "examples" / "read_results.py"), str(store)],
                            capture_output=True, text=True, check=True)
    assert re.match(r"model: \d+ active, silent: branches\.\d+", result.stdout)
    assert "most correlated pair" in result.stdout


def test_held_out_cats_example_decomposes_and_finds_eyes(tmp_path, shared_data):
    """The bundled cat generator on the 18 sample cats it was not trained on, with the roles the docs report."""
    from probekit import open_results

    out = tmp_path / "cats"
    args = [sys.executable, str(REPO / "examples" / "held_out_cats.py"), "--data-root", str(shared_data),
            "--out", str(out), "--quiet", "--option", "chan-vese.init=5", "--option", "chan-vese.segment=init"]
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    tree = open_results(out / "cats.zarr")
    decomposition = tree["decomposition"]
    assert decomposition.sizes["sample"] == 18
    assert int((decomposition.energy_share >= 0.05).sum()) >= 3
    assert float(decomposition.mean_abs_correlation) <= 0.3 and float(decomposition.mean_psnr) >= 20
    segmentation = tree["chan-vese"]
    labels = json.loads((REPO / "tests" / "data" / "afhq-cat-eyes.json").read_text())["eyes"]
    hits = 0
    for sample, centroids in zip(segmentation.sample_id.values, segmentation.eye_centroid.values, strict=True):
        eyes = np.array(labels[str(sample).split("/")[-1]])
        found = (centroids[:, ::-1] + 0.5) / 64  # (y, x) pixel indices -> (x, y) fractions
        hits += bool(np.isfinite(found).all() and all(np.linalg.norm(found - eye, axis=1).min() <= 0.08
                                                      for eye in eyes))
    assert segmentation.attrs["prior"] == "none" and hits >= 9  # both eyes on 11 of 18 when measured
    assert (out / "cats-report" / "chan-vese-overlays.png").is_file()
    again = subprocess.run(args, capture_output=True, text=True)
    assert again.returncode != 0 and "exists; choose another --out" in again.stderr


def test_eye_eval_views_move_the_eye_labels_with_the_image():
    """A dot drawn at each labelled eye lands where the transformed labels say, mirrored or not."""
    from PIL import Image, ImageDraw

    sys.path.insert(0, str(REPO / "examples"))
    from eye_eval import both_found, random_view

    eyes = np.array([[0.35, 0.45], [0.62, 0.47]])
    image = Image.new("RGB", (256, 256))
    draw = ImageDraw.Draw(image)
    for x, y in eyes * 256:
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(255, 255, 255))
    rng = np.random.default_rng(3)
    mirrored = 0
    for _ in range(12):
        view, moved = random_view(image, eyes, rng, 256)
        pixels = np.asarray(view)[..., 0] > 128
        for x, y in moved:
            if 0.03 < x < 0.97 and 0.03 < y < 0.97:
                patch = pixels[int(y * 256) - 3:int(y * 256) + 4, int(x * 256) - 3:int(x * 256) + 4]
                assert patch.any()
        assert moved[0, 0] < moved[1, 0]  # the eye on the image's left stays first
        mirrored += moved[0, 1] > moved[1, 1]  # mirrored: the lower (right) eye is now on the left
    assert 0 < mirrored < 12
    assert both_found(np.array([[0.3, 0.5], [0.6, 0.5]]), np.array([[0.32, 0.5], [0.65, 0.52]]), 0.08)
    assert not both_found(np.array([[0.3, 0.5], [np.nan, np.nan]]), np.array([[0.32, 0.5], [0.65, 0.52]]), 0.08)


@pytest.mark.slow  # about 8 minutes: six Chan-Vese and decomposition runs
def test_eye_eval_finds_eyes_on_moved_cats_more_often_than_the_weak_baselines(tmp_path, shared_data):
    """The script's default cat generator (``afhq-cat-diffusion9``) on 36 moved views (one per held-out cat and
    seed): Chan-Vese on the components, prior off, finds both eyes on at least half, well above fixed dots, the
    same pipeline on the raw value channel and on an untrained copy; every hit rate has its cat-clustered interval;
    a component concentrates its energy on the eyes far more than the input's contrast does. (The band-pass
    baseline comes close: measured 47% of views and 4.0x, within both of the model's intervals.)"""
    out = tmp_path / "eyes"
    result = subprocess.run([sys.executable, str(REPO / "examples" / "eye_eval.py"), "--data-root", str(shared_data),
                             "--out", str(out), "--per-cat", "1"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    share = {name: method["share"] for name, method in results["methods"].items()}
    assert results["views"] == 36
    assert share["chan-vese"] >= 0.5  # measured: 0.61 (22 of 36; 0.61, 0.62 and 0.59 on the 108-view sets)
    assert share["chan-vese"] >= share["fixed dots at the aligned mean"] + 0.25
    assert share["chan-vese"] >= share["raw value channel"] + 0.2
    assert share["chan-vese"] >= share["untrained copy"] + 0.25  # measured: 0.61 against 0.06
    for method in results["methods"].values():
        assert method["ci"][0] <= method["share"] <= method["ci"][1]
    ratios = results["eye_concentration"]["model"]["median_per_component"]
    assert max(ratios[:-1]) >= 4 * ratios[-1]  # measured: v1 5.36x against the input's 0.85x
    assert set(results["eye_concentration"]) == {"model", "band-pass components", "untrained copy"}
