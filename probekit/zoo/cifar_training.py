"""Training recipe of ``cifar10-branched16`` (paper section 6), resumable epoch by epoch.

Data: the CIFAR-10 train split decoded once into a uint8 tensor; standard
augmentation (random crop with 4 pixels of zero padding, horizontal flip).
Model and batches are channels-last (on one CPU thread 1.3-1.4x faster than
contiguous) only where :mod:`probekit.zoo.memory_format` finds that format's
weight gradients right on this CPU; contiguous otherwise. Optimiser: SGD,
momentum 0.9 (Nesterov), weight decay 5e-4, one-cycle learning rate peaking
at 0.02, batch 128. Loss: the paper's scheme by default
(:func:`probekit.zoo.resnet.clamped_softmax_loss`), or plain cross-entropy on
unclamped logits.

The clamp has zero gradient outside [-1, 1], so an output that leaves that
range in the wrong direction never comes back. Two measures keep the sum
inside it early on: every branch's last linear layer starts at zero (f = 0 at
initialisation; with PyTorch's default init the sum of 16 branches starts
beyond +-1 almost everywhere and nothing learns), and the peak learning rate
is 0.02 rather than the usual 0.1, because the change of the sum per step
grows with M (measured on a 3,000-image subset: at 0.05 and 0.1 every output
of a 16-branch model saturated within one epoch and accuracy stayed at 10%).

A checkpoint (model, optimiser, schedule, history) is written atomically
after every epoch; ``--resume`` continues from it, and the
data order of epoch e depends only on (seed, e), so a resumed run sees the
same batches as an uninterrupted one.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from probekit.run.atomic import recipe_json, save_atomically
from probekit.errors import ProbekitError
from probekit.zoo.memory_format import training_memory_format
from probekit.zoo.resnet import WIDTHS, branched_resnet18, clamped_softmax_loss

PAD = 4


@dataclass(frozen=True)
class CifarRecipe:
    """Hyper-parameters of the run (stored in every checkpoint)."""

    branches: int = 16
    epochs: int = 20
    batch_size: int = 128
    max_lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    scheme: str = "clamped"  # or "logits"
    seed: int = 0
    widths: tuple[int, ...] = WIDTHS
    train_limit: int | None = None  # train on a fixed random subset of this many images (reduced budgets)
    init_from: str | None = None  # zoo-format weights to start from (a fine-tune) instead of the zero-head init
    head_init: str = "zero"  # "zero": every branch starts at f = 0; "default": PyTorch's init of the last linear layer


@functools.lru_cache(maxsize=2)
def load_split(root: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One split as ``uint8 [N, 3, 32, 32]`` and ``int64 [N]`` labels, via probekit's cifar10 data source.

    Cached (one train and one test split), so a sweep over M decodes them once; treat the tensors as read-only.
    """
    from probekit.run.datasets import cifar10_data

    data = cifar10_data(f"{root}:{split}")
    loader = torch.utils.data.DataLoader(data.dataset, batch_size=1000, num_workers=data.num_workers)
    images, labels = [], []
    for x, y in tqdm(loader, desc=f"decoding {split}", unit="k images", leave=False):
        images.append((x * 255).round().to(torch.uint8))
        labels.append(y)
    return torch.cat(images), torch.cat(labels)


def augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 32x32 crops of the zero-padded images and random horizontal flips; uint8 -> float in [0, 1]."""
    n, _, h, w = images.shape
    padded = F.pad(images, (PAD, PAD, PAD, PAD))
    dy = torch.randint(0, 2 * PAD + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * PAD + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    out[flip] = out[flip].flip(-1)
    return out.float() / 255


def loss_fn(recipe: CifarRecipe):
    if recipe.scheme == "clamped":
        return clamped_softmax_loss
    if recipe.scheme == "logits":
        return F.cross_entropy
    raise ProbekitError(f"unknown training scheme {recipe.scheme!r}: clamped or logits")


@torch.no_grad()
def accuracy(model, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on uint8 images."""
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].float() / 255
        correct += int((model(x).argmax(1) == labels[start:start + batch_size]).sum())
    return correct / len(images)


def load_start_weights(path: str, config: dict) -> dict:
    """The state dict of a zoo-format file ``{config, state_dict, metrics}`` of the same architecture.

    Branches and widths must match ``config``; the clamp may differ, so a run can
    switch scheme (e.g. fine-tune clamped weights with plain logits).
    """
    if not Path(path).is_file():
        raise ProbekitError(f"--init-from: no such file: {path}")
    stored = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(stored, dict) or "state_dict" not in stored:
        raise ProbekitError(f"--init-from: {path} is not a zoo-format weights file")
    architecture = {key: config[key] for key in ("branches", "widths")}
    if {key: (stored.get("config") or {}).get(key) for key in architecture} != architecture:
        raise ProbekitError(f"--init-from: {path} has config {stored.get('config')}, this run needs {config}")
    return stored["state_dict"]


def train_cifar(recipe: CifarRecipe, data_root: str, checkpoint_dir: Path, resume: bool, progress: bool = True):
    """Train (or resume) and return ``(model, config, metrics)`` in the zoo checkpoint format."""
    if not data_root:
        raise ProbekitError("this recipe needs --data-root (e.g. ../shared/data/cifar10)")
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    last = checkpoint_dir / "last.pt"
    if last.exists() and not resume:
        raise ProbekitError(f"{last} exists: pass --resume to continue it, or choose another --checkpoint-dir")
    torch.manual_seed(recipe.seed)
    config = {"branches": recipe.branches, "widths": list(recipe.widths), "clamp": recipe.scheme == "clamped"}
    model = branched_resnet18(**config)
    if recipe.head_init not in ("zero", "default"):
        raise ProbekitError(f"unknown head init {recipe.head_init!r}: zero or default")
    if recipe.init_from:
        model.load_state_dict(load_start_weights(recipe.init_from, config))
    elif recipe.head_init == "zero":
        for branch in model.branches:  # f = 0 at the start, inside the clamp (see the module docstring)
            nn.init.zeros_(branch.linear.weight)
            nn.init.zeros_(branch.linear.bias)
    memory_format, why = training_memory_format([("cifar", config)])
    if progress:
        print(f"memory format: {why}", flush=True)
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.max_lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay, nesterov=True)
    train_x, train_y = load_split(data_root, "train")
    if recipe.train_limit is not None:
        keep = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(recipe.seed))[:recipe.train_limit]
        train_x, train_y = train_x[keep], train_y[keep]
    test_x, test_y = load_split(data_root, "test")
    steps_per_epoch = (len(train_x) + recipe.batch_size - 1) // recipe.batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.max_lr, epochs=recipe.epochs,
                                                   steps_per_epoch=steps_per_epoch)
    history, start_epoch = [], 0
    if resume and last.exists():
        state = torch.load(last, map_location="cpu", weights_only=True)
        older = {"train_limit": None, "init_from": None, "head_init": "zero"}  # fields older checkpoints lack
        stored = {**older, **json.loads(state["recipe"])}
        if stored != recipe_json(recipe):
            raise ProbekitError(f"{last} was made with other settings: {state['recipe']}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        history, start_epoch = state["history"], state["epoch"]
        print(f"resuming after epoch {start_epoch} of {recipe.epochs}", flush=True)
    criterion = loss_fn(recipe)
    for epoch in range(start_epoch, recipe.epochs):
        started = time.perf_counter()
        model.train()
        gen = torch.Generator().manual_seed(recipe.seed * 1000 + epoch)
        order = torch.randperm(len(train_x), generator=gen)
        running, seen = 0.0, 0
        bar = tqdm(order.split(recipe.batch_size), desc=f"epoch {epoch + 1}/{recipe.epochs}", unit="batch",
                   disable=not progress, mininterval=5)
        for index in bar:
            x, y = augment(train_x[index], gen).contiguous(memory_format=memory_format), train_y[index]
            loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            running += float(loss.detach()) * len(index)
            seen += len(index)
            bar.set_postfix(loss=f"{running / seen:.4f}")
        test_accuracy = accuracy(model, test_x, test_y)
        history.append({"epoch": epoch + 1, "train_loss": running / seen, "test_accuracy": test_accuracy,
                        "seconds": round(time.perf_counter() - started, 1)})
        print(json.dumps(history[-1]), flush=True)
        save_atomically({"recipe": json.dumps(recipe_json(recipe)), "epoch": epoch + 1,
                          "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "schedule": schedule.state_dict(), "history": history}, last)
    model.eval()
    metrics = {"test_accuracy": history[-1]["test_accuracy"], "epochs": recipe.epochs,
               "train_seconds": round(sum(h["seconds"] for h in history), 1), "history": history,
               "recipe": recipe_json(recipe)}
    return model, config, metrics
