"""Probe a bundled cat generator on the sample cats it was not trained on, as in docs/figures/.

    python examples/held_out_cats.py --data-root ../shared/data --out held-out-cats [--model afhq-cat-diffusion9]

Links the cats of ``samples/afhq/cat`` whose file names are not in
``afhq-cat-128/train/cat`` into ``<out>/images/cat`` (an ImageFolder tree),
then runs ``probekit run --model <model> --plugins decomposition,chan-vese --report`` on them (``--model``:
``afhq-cat-branched9`` unless given):
the store is ``<out>/cats.zarr`` and the figures are in ``<out>/cats-report``.
Extra arguments go to ``probekit run`` (e.g. ``--option chan-vese.init=5,6,0``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from probekit.cli import main as probekit


def held_out_cats(data_root: Path) -> list[Path]:
    """The sample cat images whose names are not among the training cats, sorted by name."""
    samples, train = data_root / "samples" / "afhq" / "cat", data_root / "afhq-cat-128" / "train" / "cat"
    for folder in (samples, train):
        if not folder.is_dir():
            sys.exit(f"held_out_cats: {folder} not found (is --data-root the shared data folder?)")
    trained = {p.name for p in train.iterdir()}
    return sorted(p for p in samples.iterdir() if p.name not in trained)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("held-out-cats"))
    parser.add_argument("--model", default="afhq-cat-branched9", help="a zoo name or a generator weights file")
    args, extra = parser.parse_known_args()
    folder = args.out / "images" / "cat"
    if folder.exists():
        sys.exit(f"held_out_cats: {folder} exists; choose another --out")
    folder.mkdir(parents=True)
    cats = held_out_cats(args.data_root)
    for path in cats:
        (folder / path.name).symlink_to(path.resolve())
    print(f"{len(cats)} held-out cats linked into {folder}")
    return probekit(["run", "--model", args.model, "--data", f"imagefolder:{folder.parent}",
                     "--plugins", "decomposition,chan-vese", "--out", str(args.out / "cats.zarr"), "--report",
                     *extra])


if __name__ == "__main__":
    sys.exit(main())
