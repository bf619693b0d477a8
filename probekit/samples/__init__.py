"""Bundled evaluation samples, so demos and tests run without ``../shared``.

``cifar10-test-1000.npz``: 100 images of each CIFAR-10 class from the test
split (the first 100 file names of each class folder in the ImageFolder copy
of ``../shared/data/cifar10``), as ``images`` uint8 ``[1000, 3, 32, 32]``,
``labels`` int64 ``[1000]`` and ``ids`` (``<class>/<file>``). Rebuild it with
``python -m probekit.samples ../shared/data/cifar10``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CIFAR10_SAMPLE = Path(__file__).parent / "cifar10-test-1000.npz"
PER_CLASS = 100


def build_cifar10_sample(root: str | Path, out: Path = CIFAR10_SAMPLE, per_class: int = PER_CLASS) -> Path:
    """Write the class-balanced sample from ``root/test/<class>/<image>``."""
    from PIL import Image

    test = Path(root) / "test"
    classes = sorted(p.name for p in test.iterdir() if p.is_dir())
    images, labels, ids = [], [], []
    for label, name in enumerate(classes):
        for path in sorted((test / name).iterdir())[:per_class]:
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB")).transpose(2, 0, 1))
            labels.append(label)
            ids.append(f"{name}/{path.name}")
    np.savez_compressed(out, images=np.stack(images), labels=np.array(labels, dtype=np.int64),
                        ids=np.array(ids), classes=np.array(classes))
    return out


def load_cifar10_sample() -> dict[str, np.ndarray]:
    """The bundled sample's arrays (``images``, ``labels``, ``ids``, ``classes``)."""
    with np.load(CIFAR10_SAMPLE, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}

