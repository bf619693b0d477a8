"""Does eye segmentation follow the cat? Chan-Vese on a generator's components, on moved held-out cats.

    python examples/eye_eval.py --data-root ../shared/data --out eye-eval [--model afhq-cat-branched9]

``--model`` is ``afhq-cat-diffusion9`` (the cat generator with the most eye-like components) unless given.

Each of the 18 held-out sample cats (``examples/held_out_cats.py``) is randomly cropped (a square of 0.62-0.78
of the side), placed anywhere in the image, and mirrored half the time: ``--per-cat`` views per cat for each
seed in ``--seeds``. The hand-placed eye centres (``tests/data/afhq-cat-eyes.json``) follow the same transform.
A view counts when both eyes have a candidate within ``--radius`` (0.08) of the image width. Methods, all on
the same views:

* ``chan-vese``: ``probekit run --plugins chan-vese`` on the model's components, position prior off (default);
* ``chan-vese + prior``: the same with ``chan-vese.prior=true`` (the first batch's mean score), reported apart;
* ``band-pass components``: the same run on ``afhq-cat-bandpass9``, 9 difference-of-Gaussian bands of the input
  (the strongest simple decomposition: no learning at all);
* ``untrained copy``: the same run on the model's architecture at its default initialisation (``--state init``);
* ``fixed dots``: two dots at the mean eye position of the aligned cats (a position prior alone);
* ``raw value``: the same pipeline on the image's own HSV value channel as its only component, no
  decomposition.

Every hit rate comes with a 95% bootstrap interval clustered by cat (the views of one cat are not independent).

It also measures whether any component concentrates on the eyes: on the aligned held-out cats, each component's
share of its energy (squared values) inside the labelled eye discs (radius ``--radius``), divided by the discs'
share of the image area (1: no concentration), for the model, the band-pass bands and the untrained copy, beside
the input's own contrast; the best component's median over cats has a 95% bootstrap interval over cats.

Writes ``<out>/views/cat/*.png``, one store per Chan-Vese method, ``<out>/aligned.zarr`` and
``<out>/results.json``; prints two tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from held_out_cats import held_out_cats  # noqa: E402

LABELS = Path(__file__).resolve().parents[1] / "tests" / "data" / "afhq-cat-eyes.json"
SCALE = (0.62, 0.78)


def random_view(image: Image.Image, eyes: np.ndarray, rng: np.random.Generator, size: int):
    """A random square crop (side a fraction ``SCALE`` of the image's), anywhere, mirrored half the time,
    resized to ``size``; the eye centres ``[2, (x, y)]`` (fractions) moved with it."""
    side = rng.uniform(*SCALE)
    left, top = rng.uniform(0, 1 - side, 2)
    w, h = image.size
    box = (int(round(left * w)), int(round(top * h)), int(round((left + side) * w)), int(round((top + side) * h)))
    view = image.crop(box).resize((size, size), Image.Resampling.LANCZOS)
    moved = (eyes - [box[0] / w, box[1] / h]) / [(box[2] - box[0]) / w, (box[3] - box[1]) / h]
    if rng.random() < 0.5:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        moved = np.stack([1 - moved[:, 0], moved[:, 1]], 1)[::-1]
    return view, moved


def both_found(candidates: np.ndarray, eyes: np.ndarray, radius: float) -> bool:
    """Whether each eye ``[2, (x, y)]`` has a candidate ``[n, (x, y)]`` within ``radius`` (fractions)."""
    candidates = candidates[np.isfinite(candidates).all(1)]
    if not len(candidates):
        return False
    return all(np.linalg.norm(candidates - eye, axis=1).min() <= radius for eye in eyes)


BAND_PASS = "afhq-cat-bandpass9"
CI_RESAMPLES = 1000


def chan_vese_candidates(model: str, folder: Path, store: Path, prior: bool, resolution: int,
                         state: str = "trained") -> tuple[np.ndarray, str]:
    """``[N, 2, (x, y)]`` eye candidates (fractions) of ``chan-vese`` on every view, in the views' order, and the
    node's ``prior`` attr; ``state`` as ``probekit run --state``."""
    import probekit

    node = probekit.probe(model, f"imagefolder:{folder}", ["chan-vese"], out=store, overwrite=True, progress=False,
                          options={"chan-vese": {"prior": prior}}, state=state)["chan-vese"]
    ids = [str(i) for i in node.sample_id.values]
    centroids = (node.eye_centroid.values[:, :, ::-1] + 0.5) / resolution  # (y, x) pixel indices -> (x, y) fractions
    order = np.argsort(ids, kind="stable")
    return centroids[order], node.attrs["prior"]


def raw_value_candidates(views: list[Image.Image], resolution: int) -> np.ndarray:
    """The same pipeline (default settings, no prior) on each view's own HSV value channel as its only
    component, at the model's resolution: no decomposition."""
    from probekit_plugins.chan_vese.segmentation import SCORE, SegmentSettings, segment_eyes, value_images

    settings = SegmentSettings()
    out = []
    for view in views:
        rgb = np.asarray(view.resize((resolution, resolution), Image.Resampling.LANCZOS), dtype=np.float64) / 255
        value = value_images(rgb.transpose(2, 0, 1)[None])[:, None]  # [1, 1, H, W]
        out.append((segment_eyes(value, [0], SCORE, None, settings).centroids[:, ::-1] + 0.5) / resolution)
    return np.stack(out)


def clustered_interval(hits: np.ndarray, groups: np.ndarray, seed: int = 0) -> list[float]:
    """95% bootstrap interval of the hit rate, resampling whole cats (``groups``)."""
    from probekit.api import bootstrap_ci

    low, high = bootstrap_ci(lambda rows: hits[rows].mean(), len(hits), CI_RESAMPLES, np.random.default_rng(seed),
                             groups=groups)
    return [float(low), float(high)]


def eye_concentration(model: str, cats: list[Path], labels: dict, out: Path, radius: float,
                      state: str = "trained") -> np.ndarray:
    """``[cats, K + 1]``: each component's energy share inside the two eye discs over the discs' area share, on
    the aligned held-out cats; the last column is the baseline, the input's own contrast energy (its squared
    difference from its mean colour)."""
    import probekit

    folder = out / "aligned" / "cat"
    folder.mkdir(parents=True, exist_ok=True)
    for path in cats:
        if not (folder / path.name).exists():
            (folder / path.name).symlink_to(path.resolve())
    store = out / f"aligned-{Path(model).stem}-{state}.zarr"
    node = probekit.probe(model, f"imagefolder:{folder.parent}", ["decomposition"], out=store, overwrite=True,
                          progress=False, state=state)["decomposition"]
    image = node.input.values.astype(np.float64)
    contrast = ((image - image.mean(axis=(2, 3), keepdims=True)) ** 2).sum(1, keepdims=True)  # [cats, 1, H, W]
    energy = np.concatenate([(node.component.values.astype(np.float64) ** 2).sum(2), contrast], 1)
    h, w = energy.shape[-2:]
    rows, cols = np.mgrid[0:h, 0:w]
    ratios = []
    for i, sample in enumerate(str(s).split("/")[-1] for s in node.sample_id.values):
        discs = np.zeros((h, w), dtype=bool)
        for x, y in labels[sample]:
            discs |= (cols + 0.5 - x * w) ** 2 + (rows + 0.5 - y * h) ** 2 <= (radius * w) ** 2
        inside = energy[i][:, discs].sum(1) / energy[i].reshape(len(energy[i]), -1).sum(1)
        ratios.append(inside / discs.mean())
    return np.array(ratios)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--model", default="afhq-cat-diffusion9", help="a zoo name or a generator weights file")
    parser.add_argument("--out", type=Path, default=Path("eye-eval"))
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds of the random views")
    parser.add_argument("--per-cat", type=int, default=3, help="views per cat and seed")
    parser.add_argument("--radius", type=float, default=0.08, help="hit radius, a fraction of the width")
    args = parser.parse_args()

    from probekit.models.loading import load_model

    resolution = int(getattr(load_model(args.model).module, "resolution", 64))
    labels = json.loads(LABELS.read_text())["eyes"]
    cats = held_out_cats(args.data_root)
    if sorted(p.name for p in cats) != sorted(labels):
        sys.exit(f"eye_eval: the held-out cats and the labels in {LABELS} differ")
    aligned_mean = np.mean([labels[p.name] for p in cats], axis=0)  # [2, (x, y)] on the aligned images
    folder = args.out / "views" / "cat"
    folder.mkdir(parents=True, exist_ok=True)
    views, eyes, names = [], [], []
    for seed in (int(s) for s in args.seeds.split(",")):
        rng = np.random.default_rng(seed)
        for path in cats:
            image = Image.open(path).convert("RGB")
            for k in range(args.per_cat):
                view, moved = random_view(image, np.array(labels[path.name]), rng, image.size[0])
                name = f"s{seed}-{path.stem}-{k}.png"
                view.save(folder / name)
                views.append(view)
                eyes.append(moved)
                names.append(name)
    order = np.argsort(names, kind="stable")
    views, eyes, names = [views[i] for i in order], np.stack(eyes)[order], [names[i] for i in order]
    torch.manual_seed(0)
    methods = {}
    for label, prior in (("chan-vese", False), ("chan-vese + prior", True)):
        found, how = chan_vese_candidates(args.model, folder.parent, args.out / f"{'prior' if prior else 'cv'}.zarr",
                                          prior, resolution)
        methods[label] = found
        assert (how != "none") == prior, f"the chan-vese node says its prior was {how!r}"
    methods["band-pass components"], _ = chan_vese_candidates(BAND_PASS, folder.parent, args.out / "bandpass.zarr",
                                                              False, resolution)
    methods["untrained copy"], _ = chan_vese_candidates(args.model, folder.parent, args.out / "untrained.zarr", False,
                                                        resolution, state="init")
    methods["fixed dots at the aligned mean"] = np.broadcast_to(aligned_mean, eyes.shape)
    methods["raw value channel"] = raw_value_candidates(views, resolution)
    results = {"model": args.model, "views": len(names), "cats": len(cats), "seeds": args.seeds,
               "per_cat": args.per_cat, "radius": args.radius, "scale": SCALE, "methods": {}}
    print(f"{len(names)} views ({len(cats)} cats x {args.per_cat} x seeds {args.seeds}), model {args.model}, "
          f"hit radius {args.radius} W; intervals: 95% bootstrap clustered by cat")
    print("| method | both eyes found | share | 95% interval |\n|---|---|---|---|")
    cat_of = np.array([name.split("-", 1)[1].rsplit("-", 1)[0] for name in names])
    for name, candidates in methods.items():
        hits = np.array([both_found(c, e, args.radius) for c, e in zip(candidates, eyes, strict=True)])
        interval = clustered_interval(hits.astype(np.float64), cat_of)
        results["methods"][name] = {"found": int(hits.sum()), "share": float(hits.mean()), "ci": interval,
                                    "per_view": dict(zip(names, map(bool, hits), strict=True))}
        print(f"| {name} | {hits.sum()}/{len(hits)} | {hits.mean():.1%} | {interval[0]:.1%}-{interval[1]:.1%} |")
    results["eye_concentration"] = {}
    print("\nenergy share inside the eye discs / their area share, median over the aligned held-out cats "
          "(best component with its 95% interval over cats):")
    for label, model, state in (("model", args.model, "trained"), ("band-pass components", BAND_PASS, "trained"),
                                ("untrained copy", args.model, "init")):
        ratios = eye_concentration(model, cats, labels, args.out, args.radius, state)
        median = np.median(ratios, axis=0)
        best = int(np.argmax(median[:-1]))
        interval = clustered_interval_of_median(ratios[:, best])
        results["eye_concentration"][label] = {"median_per_component": median.tolist(), "per_cat": ratios.tolist(),
                                               "best": best, "best_ci": interval}
        print(f"| {label} | " + " | ".join(f"{r:.2f}" for r in median[:-1]) +
              f" | best v{best} {median[best]:.2f} ({interval[0]:.2f}-{interval[1]:.2f}) | input {median[-1]:.2f} |")
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    return 0


def clustered_interval_of_median(values: np.ndarray, seed: int = 0) -> list[float]:
    """95% bootstrap interval of the median of ``values`` (one per cat), resampling cats."""
    from probekit.api import bootstrap_ci

    low, high = bootstrap_ci(lambda rows: np.median(values[rows]), len(values), CI_RESAMPLES,
                             np.random.default_rng(seed))
    return [float(low), float(high)]


if __name__ == "__main__":
    sys.exit(main())
