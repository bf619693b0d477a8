"""The hand-placed eye centres in tests/data cover exactly the held-out sample cats, and are plausible."""

import json
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LABELS = Path(__file__).parent / "data" / "afhq-cat-eyes.json"


@pytest.mark.skipif(not (DATA / "afhq-cat-128" / "train").is_dir(), reason=f"the AFHQ data is not in {DATA}")
def test_eye_labels_cover_the_held_out_cats():
    eyes = json.loads(LABELS.read_text())["eyes"]
    train = {p.name for p in (DATA / "afhq-cat-128" / "train").rglob("*") if p.is_file()}
    held_out = {p.name for p in (DATA / "samples" / "afhq" / "cat").iterdir() if p.name not in train}
    assert set(eyes) == held_out and len(eyes) == 18
    for (lx, ly), (rx, ry) in eyes.values():
        assert 0 < lx < rx < 1 and 0 < ly < 1 and 0 < ry < 1
        assert 0.2 < rx - lx < 0.4  # the faces are aligned crops: eyes about a third of the width apart
