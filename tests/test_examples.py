import re
import subprocess
import sys

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
    found = tree["chan-vese"].found.values
    assert found.sum() >= 7  # a pair on 9 of 18 with the position prior off (the default); 16 with it on
    assert (out / "cats-report" / "chan-vese-overlays.png").is_file()
    again = subprocess.run(args, capture_output=True, text=True)
    assert again.returncode != 0 and "exists; choose another --out" in again.stderr


def test_eye_eval_views_move_the_eye_labels_with_the_image():
    """A dot drawn at each labelled eye lands where the transformed labels say, mirrored or not."""
    import numpy as np
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
