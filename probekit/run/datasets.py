"""Built-in data sources (a plugin of the core): toy1, toy2, digits, cifar10, imagefolder, random, and text and
jsonl for token models (:mod:`probekit.run.text_data`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from probekit.run.data import ProbeData
from probekit.errors import ProbekitError
from probekit.hookspecs import hookimpl
from probekit.run.text_data import jsonl_data, text_data

#: The paper's section 4.1 training points, exactly: (inputs, targets).
TOY_POINTS = {
    "toy1": ([-1.0, 0.0, 0.0, 1.0], [1.0, 0.5, 0.5, 1.0]),
    "toy2": ([-1.0, 0.0, 1.0, 2.0], [1.0, 0.25, 0.5, 0.75]),
}

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DIGITS_TEST_EVERY = 5  # sample i is in the digits test split when i % 5 == 0


def toy_data(name: str) -> ProbeData:
    """The four points of toy1/toy2: x of shape ``[1]``, float targets."""
    xs, ys = TOY_POINTS[name]
    dataset = TensorDataset(torch.tensor(xs).unsqueeze(1), torch.tensor(ys))
    return ProbeData(name, dataset, [str(i) for i in range(len(xs))])


def digits_arrays(split: str) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """scikit-learn's 8x8 digits as ``([N,1,8,8] in [0,1], [N] labels, indices)``.

    ``split`` is ``all``, ``train`` or ``test`` (every 5th sample is test).
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    index = np.arange(len(bunch.target))
    if split == "train":
        index = index[index % DIGITS_TEST_EVERY != 0]
    elif split == "test":
        index = index[index % DIGITS_TEST_EVERY == 0]
    elif split not in ("", "all"):
        raise ProbekitError(f"digits split must be train, test or all, not {split!r}")
    images = torch.tensor(bunch.images[index], dtype=torch.float32).unsqueeze(1) / 16.0
    return images, torch.tensor(bunch.target[index]), index


def digits_data(split: str) -> ProbeData:
    images, labels, index = digits_arrays(split)
    return ProbeData(f"digits:{split or 'all'}", TensorDataset(images, labels), [str(i) for i in index],
                     classes=[str(d) for d in range(10)])


class RandomImages(Dataset):
    """Standard-normal tensors of one shape; sample i is seeded by ``(seed, i)``, so it never
    depends on the batch size or on which worker draws it."""

    def __init__(self, shape: tuple[int, ...], n: int, seed: int):
        self.shape, self.n, self.seed = shape, n, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        return torch.randn(self.shape, generator=gen), 0


def random_data(argument: str, seed: int) -> ProbeData:
    """``random:C,H,W`` (any number of dims); 100,000 samples, use ``--limit``."""
    try:
        shape = tuple(int(s) for s in argument.split(","))
    except ValueError:
        shape = ()
    if not shape or any(s <= 0 for s in shape):
        raise ProbekitError(f"random data needs a shape like random:3,32,32, not {argument!r}")
    n = 100_000
    return ProbeData(f"random:{argument}", RandomImages(shape, n, seed), [str(i) for i in range(n)], has_targets=False)


def split_size(argument: str) -> tuple[str, int | None]:
    """``PATH:SIZE`` -> ``(PATH, SIZE)`` when the text after the last ``:`` is a whole number, else
    ``(argument, None)``."""
    head, _, tail = argument.rpartition(":")
    if head and tail.isdigit():
        size = int(tail)
        if not 8 <= size <= 4096:
            raise ProbekitError(f"image size must be 8 to 4096 pixels, not {size}")
        return head, size
    return argument, None


def image_folder(path: str, name: str) -> ProbeData:
    """An ImageFolder tree ``<path>/<class>/<file>``, as ``[3,H,W]`` tensors in [0,1]; ``<path>:SIZE`` resizes
    every image to SIZE x SIZE (for folders of mixed sizes)."""
    from torchvision import datasets, transforms

    path, size = split_size(path)
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ProbekitError(f"image folder not found: {path}")
    steps = ([transforms.Resize((size, size), antialias=True)] if size else []) + [transforms.ToTensor()]
    try:
        dataset = datasets.ImageFolder(str(root), transform=transforms.Compose(steps))
    except (FileNotFoundError, RuntimeError) as exc:
        raise ProbekitError(f"{path} is not an ImageFolder tree (<class>/<image>): {exc}") from exc
    ids = [os.path.relpath(p, root) for p, _ in dataset.samples]
    check_image_headers([p for p, _ in dataset.samples], ids, same_size=size is None)
    return ProbeData(name, dataset, ids, classes=list(dataset.classes), num_workers=min(2, os.cpu_count() or 1))


def check_image_headers(paths: list[str], ids: list[str], same_size: bool = True) -> None:
    """Read every image's header (about 30 us each): an unreadable file, or (with ``same_size``) one whose size
    differs from the first image's, is one error line naming the file, before any batch is made."""
    from PIL import Image, UnidentifiedImageError
    from PIL.Image import DecompressionBombError  # (a subclass of Exception, not of OSError)

    first = None
    for path, sample_id in zip(paths, ids, strict=True):
        try:
            with Image.open(path) as image:
                size = image.size
        except (OSError, UnidentifiedImageError, ValueError, DecompressionBombError) as exc:
            raise ProbekitError(f"image {sample_id} cannot be read: {type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else 'empty or corrupt file'}") from None
        if first is None:
            first = (sample_id, size)
        elif same_size and size != first[1]:
            raise ProbekitError(f"image {sample_id} is {size[0]}x{size[1]} but {first[0]} is "
                                f"{first[1][0]}x{first[1][1]}: a batch needs images of one size; resize them "
                                f"with imagefolder:PATH:SIZE")


def cifar10_data(argument: str) -> ProbeData:
    """``cifar10:ROOT[:train|test]`` (test by default).

    ROOT holds the official ``cifar-10-batches-py`` (read by torchvision with
    ``download=False``) or the ImageFolder layout ``<split>/<class>/<image>``.
    """
    root, split = argument, "test"
    head, _, tail = argument.rpartition(":")
    if head and tail in ("train", "test"):
        root, split = head, tail
    if not root:
        raise ProbekitError("cifar10 data needs a root: cifar10:PATH")
    base = Path(root).expanduser()
    if (base / "cifar-10-batches-py").is_dir() or base.name == "cifar-10-batches-py":
        from torchvision import datasets, transforms

        parent = base.parent if base.name == "cifar-10-batches-py" else base
        try:
            dataset = datasets.CIFAR10(str(parent), train=split == "train", download=False,
                                       transform=transforms.ToTensor())
        except RuntimeError as exc:
            raise ProbekitError(f"CIFAR-10 batches under {parent} are unreadable: {exc}") from exc
        ids = [f"{split}/{i:05d}" for i in range(len(dataset))]
        return ProbeData(f"cifar10:{split}", dataset, ids, classes=list(dataset.classes))
    if (base / split).is_dir():
        return image_folder(str(base / split), f"cifar10:{split}")
    raise ProbekitError(f"no CIFAR-10 under {root}: expected cifar-10-batches-py/ or {split}/<class>/<image>")


def interleaved_by_class(labels: np.ndarray) -> np.ndarray:
    """Positions that cycle through the classes (first image of each class, then the second, ...), so any
    ``--limit`` or first batch of a class-sorted sample is class-balanced."""
    rank = np.zeros(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rank[members] = np.arange(len(members))
    return np.lexsort((labels, rank))


def cifar10_sample_data(argument: str = "") -> ProbeData:
    """The bundled class-balanced sample of 1,000 CIFAR-10 test images (``cifar10-sample``), interleaved by class;
    ``cifar10-sample:SIZE`` resizes them to SIZE x SIZE (bilinear, antialiased)."""
    from probekit.samples import load_cifar10_sample

    size = None
    if argument:
        try:
            size = int(argument)
        except ValueError:
            size = 0
        if not 8 <= size <= 1024:
            raise ProbekitError(f"cifar10-sample:SIZE needs a size in pixels from 8 to 1024, not {argument!r}")
    arrays = load_cifar10_sample()
    order = interleaved_by_class(arrays["labels"])
    images = torch.from_numpy(arrays["images"][order]).float() / 255
    if size is not None and size != images.shape[-1]:
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", antialias=True,
                                                 align_corners=False).clamp(0, 1)
    dataset = TensorDataset(images, torch.from_numpy(arrays["labels"][order]))
    name = "cifar10-sample" + (f":{size}" if size is not None else "")
    return ProbeData(name, dataset, [str(i) for i in arrays["ids"][order]], classes=[str(c) for c in arrays["classes"]])


@hookimpl
def probekit_register_datasets(register):
    register("toy1", lambda argument, seed: toy_data("toy1"))
    register("toy2", lambda argument, seed: toy_data("toy2"))
    register("digits", lambda argument, seed: digits_data(argument))
    register("random", random_data)
    register("cifar10", lambda argument, seed: cifar10_data(argument))
    register("cifar10-sample", lambda argument, seed: cifar10_sample_data(argument))
    register("imagefolder", lambda argument, seed: image_folder(argument, f"imagefolder:{argument}"))
    register("text", text_data)
    register("jsonl", jsonl_data)
