"""Training recipes of ``afhq-cat-branched9`` and ``celeba-branched9`` (paper section 7, appendix E).

Adversarial training only, as in the paper: no cycle, style or
reconstruction losses; fidelity comes from ``R`` in ``f(x) = R + sum_k v_k``.
Each iteration draws a batch of real images (random horizontal flips) and a
uniformly random target class per image (its own class half the time for
two classes, always for one), then

* discriminator: non-saturating loss ``softplus(-D(x, y)) + softplus(D(G(x, t), t))``
  plus the R1 penalty ``r1 / 2 |d D(x, y) / d x|^2`` on real images (StarGAN-v2's);
* generator: ``softplus(-D(G(x, t), t))``, on the same generator forward as the discriminator's fakes.

Every branch's last conv starts at zero (:func:`start_at_residual`), so training starts from ``f = R``.
Both networks and the batches are channels-last (about 15% faster on the CPU than contiguous) where
:mod:`probekit.zoo.memory_format` finds that format's weight gradients right on this CPU; contiguous otherwise.

Adam (lr 1e-4, betas (0, 0.99)) for both, as StarGAN-v2; the bundled weights
are an exponential moving average of the generator's (decay 0.999). A
checkpoint (both networks, the average, optimisers, history) is written
atomically every ``checkpoint_every`` iterations, with a grid of generated
held-out images; the batch of iteration i depends only on (seed, i), so a
resumed run sees the same batches. At the end, the averaged generator's
re-generation fidelity (target = the input's own class) is measured on the
held-out images: PSNR and SSIM at the model's resolution.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from probekit.run.atomic import recipe_json, save_atomically
from probekit.errors import ProbekitError
from probekit.zoo.generator import BranchedGenerator, ResBlock
from probekit.zoo.memory_format import training_memory_format
from probekit.measures.image_components import fidelity


@dataclass(frozen=True)
class GanRecipe:
    """Hyper-parameters of a generator run (stored in every checkpoint). ``train`` and ``held_out`` are
    ImageFolder trees under the data root; held-out images of other classes, or whose file name is also in
    the training folder, are left out."""

    train: str
    held_out: str
    branches: int = 9
    resolution: int = 64
    widths: tuple[int, ...] = (8, 16, 32)
    preprocessing: str = "gaussian"
    iterations: int = 6000
    batch_size: int = 16
    lr: float = 1e-4
    r1: float = 1.0
    ema: float = 0.999
    seed: int = 0
    checkpoint_every: int = 250
    held_out_limit: int = 500


class Discriminator(nn.Module):
    """Slim StarGAN-v2 discriminator: ``[N, 3, r, r]`` and class ids ``[N]`` -> realness logits ``[N]``."""

    def __init__(self, classes: int, resolution: int, width: int = 16, max_width: int = 64):
        super().__init__()
        blocks, cin = [nn.Conv2d(3, width, 3, 1, 1)], width
        for _ in range(int(math.log2(resolution)) - 2):  # down to 4x4
            cout = min(2 * cin, max_width)
            blocks.append(ResBlock(cin, cout, downsample=True))
            cin = cout
        blocks += [nn.LeakyReLU(0.2), nn.Conv2d(cin, cin, 4), nn.LeakyReLU(0.2), nn.Conv2d(cin, classes, 1)]
        self.net = nn.Sequential(*blocks)

    def forward(self, x, y):
        return self.net(x).flatten(1).gather(1, y[:, None]).squeeze(1)


def load_folder(root: Path, resolution: int, limit: int | None = None, exclude: set[str] = frozenset(),
                classes: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """An ImageFolder tree as ``uint8 [N, 3, r, r]`` (antialiased resize), labels ``[N]`` and class names.

    ``classes``: keep only these class folders, labelled by their position in this list.
    """
    from torchvision import datasets, transforms

    if not root.is_dir():
        raise ProbekitError(f"image folder not found: {root}")
    transform = transforms.Compose([transforms.Resize((resolution, resolution), antialias=True),
                                    transforms.PILToTensor()])
    dataset = datasets.ImageFolder(str(root), transform=transform)
    names = list(classes or dataset.classes)
    keep = [i for i, (path, y) in enumerate(dataset.samples)
            if Path(path).name not in exclude and dataset.classes[y] in names][:limit]
    images, labels = [], []
    for i in tqdm(keep, desc=f"decoding {root.name}", unit="image", leave=False, mininterval=5):
        image, y = dataset[i]
        images.append(image)
        labels.append(names.index(dataset.classes[y]))
    if not images:
        raise ProbekitError(f"no images of classes {names} in {root}")
    return torch.stack(images), torch.tensor(labels), names


def held_out_set(recipe: GanRecipe, root: Path, classes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out images of the training ``classes``, without files whose name is in the training folder."""
    train_names = {p.name for p in (root / recipe.train).rglob("*") if p.is_file()}
    images, labels, _ = load_folder(root / recipe.held_out, recipe.resolution, recipe.held_out_limit,
                                    exclude=train_names, classes=classes)
    return images, labels


@torch.no_grad()
def regeneration_fidelity(generator: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Mean PSNR [dB] and SSIM of re-generations (target = own class) of uint8 ``images``."""
    generator.eval()
    psnr, ssim = [], []
    for start in range(0, len(images), 64):
        x = images[start:start + 64].float() / 255
        scores = fidelity(generator(x, labels[start:start + 64]).numpy(), x.numpy())
        psnr.append(scores[0])
        ssim.append(scores[1])
    return {"psnr_db": float(np.concatenate(psnr).mean()), "ssim": float(np.concatenate(ssim).mean()),
            "held_out_images": len(images)}


def save_grid(generator: nn.Module, images: torch.Tensor, labels: torch.Tensor, path: Path) -> None:
    """Held-out inputs (top row) over their re-generations (bottom row), as a PNG."""
    from torchvision.utils import save_image

    generator.eval()
    with torch.no_grad():
        x = images[:8].float() / 255
        out = generator(x, labels[:8]).clamp(0, 1)
    save_image(torch.cat([x, out]), path, nrow=len(x))


def start_at_residual(generator: BranchedGenerator) -> BranchedGenerator:
    """Zero every branch's last conv, so that ``f(x) = R`` at initialisation; returns ``generator``.

    With PyTorch's default init the nine components start as large random images (held-out PSNR
    about 7 dB); from zero, training starts at the fidelity of ``R`` and each branch grows its
    own component.
    """
    for branch in generator.branches:
        nn.init.zeros_(branch.to_rgb[-1].weight)
        nn.init.zeros_(branch.to_rgb[-1].bias)
    return generator


def generator_config(recipe: GanRecipe, classes: int) -> dict:
    """The zoo config of the recipe's generator."""
    return {"branches": recipe.branches, "classes": classes, "widths": list(recipe.widths),
            "preprocessing": recipe.preprocessing, "resolution": recipe.resolution}


def _without_length(recipe: dict) -> dict:
    """A recipe without ``iterations``: nothing else depends on it, so a resumed run may be extended or ended."""
    return {key: value for key, value in recipe.items() if key != "iterations"}


def train_gan(recipe: GanRecipe, data_root: str, checkpoint_dir: Path, resume: bool, progress: bool = True):
    """Train (or resume) and return ``(averaged generator, config, metrics)`` in the zoo checkpoint format."""
    if not data_root:
        raise ProbekitError("this recipe needs --data-root (e.g. ../shared/data)")
    root = Path(data_root).expanduser()
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    last = checkpoint_dir / "last.pt"
    if last.exists() and not resume:
        raise ProbekitError(f"{last} exists: pass --resume to continue it, or choose another --checkpoint-dir")
    images, labels, classes = load_folder(root / recipe.train, recipe.resolution)
    held_images, held_labels = held_out_set(recipe, root, classes)
    torch.manual_seed(recipe.seed)
    config = generator_config(recipe, len(classes))
    memory_format, why = training_memory_format([("generator", config), ("discriminator", {
        "classes": len(classes), "resolution": recipe.resolution})])
    if progress:
        print(f"memory format: {why}", flush=True)
    generator = start_at_residual(BranchedGenerator(**config)).to(memory_format=memory_format)
    discriminator = Discriminator(len(classes), recipe.resolution).to(memory_format=memory_format)
    average = copy.deepcopy(generator).eval()
    opt_g = torch.optim.Adam(generator.parameters(), lr=recipe.lr, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=recipe.lr, betas=(0.0, 0.99))
    history, start, seconds = [], 0, 0.0
    if resume and last.exists():
        state = torch.load(last, map_location="cpu", weights_only=True)
        if _without_length(json.loads(state["recipe"])) != _without_length(recipe_json(recipe)):
            raise ProbekitError(f"{last} was made with other settings: {state['recipe']}")
        for module, key in ((generator, "generator"), (discriminator, "discriminator"), (average, "average"),
                            (opt_g, "opt_g"), (opt_d, "opt_d")):
            module.load_state_dict(state[key])
        history, start, seconds = state["history"], state["iteration"], state["seconds"]
        if start > recipe.iterations:
            raise ProbekitError(f"{last} is at iteration {start}, past --iterations {recipe.iterations}; pass "
                                f"--iterations {start} to write its averaged generator as it is")
        print(f"resuming after iteration {start} of {recipe.iterations}", flush=True)
    bar = tqdm(range(start, recipe.iterations), desc="iterations", unit="it", disable=not progress, mininterval=5,
               initial=start, total=recipe.iterations)
    window = np.zeros(3)
    started = time.perf_counter()
    for iteration in bar:
        gen = torch.Generator().manual_seed(recipe.seed * 1_000_003 + iteration)
        index = torch.randint(0, len(images), (recipe.batch_size,), generator=gen)
        x, y = (images[index].float() / 255).contiguous(memory_format=memory_format), labels[index]
        flip = torch.rand(len(x), generator=gen) < 0.5
        x[flip] = x[flip].flip(-1)
        target = torch.randint(0, len(classes), (len(x),), generator=gen)
        losses = gan_step(generator, discriminator, opt_g, opt_d, x, y, target, recipe.r1)
        with torch.no_grad():
            for a, p in zip(average.parameters(), generator.parameters(), strict=True):
                a.lerp_(p, 1 - recipe.ema)
        window += losses
        done = iteration + 1
        if done % recipe.checkpoint_every == 0 or done == recipe.iterations:
            seconds += time.perf_counter() - started
            started = time.perf_counter()
            count = done - (history[-1]["iteration"] if history else start)
            history.append({"iteration": done, **dict(zip(("loss_d", "loss_g", "r1"), (window / count).tolist(),
                                                          strict=True)), "seconds": round(seconds, 1)})
            window[:] = 0
            print(json.dumps(history[-1]), flush=True)
            save_grid(average, held_images, held_labels, checkpoint_dir / f"samples-{done:06d}.png")
            save_atomically({"recipe": json.dumps(recipe_json(recipe)), "iteration": done, "seconds": seconds,
                              "generator": generator.state_dict(), "discriminator": discriminator.state_dict(),
                              "average": average.state_dict(), "opt_g": opt_g.state_dict(),
                              "opt_d": opt_d.state_dict(), "history": history}, last)
    metrics = {**regeneration_fidelity(average, held_images, held_labels), "iterations": recipe.iterations,
               "train_seconds": round(seconds, 1), "classes": classes, "history": history,
               "recipe": recipe_json(recipe)}
    return average.eval(), config, metrics


def gan_step(generator, discriminator, opt_g, opt_d, x, y, target, r1: float) -> np.ndarray:
    """One discriminator and one generator update; returns ``[loss_d, loss_g, r1 penalty]``.

    One generator forward serves both updates (detached for the discriminator's), as in the
    DCGAN reference loop: the generator's weights do not change in between.
    """
    generator.train()
    fake = generator(x, target)
    real = x.requires_grad_()
    d_real = discriminator(real, y)
    (grad,) = torch.autograd.grad(d_real.sum(), real, create_graph=True)
    penalty = 0.5 * r1 * grad.pow(2).flatten(1).sum(1).mean()
    loss_d = F.softplus(-d_real).mean() + F.softplus(discriminator(fake.detach(), target)).mean() + penalty
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    loss_g = F.softplus(-discriminator(fake, target)).mean()
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    return np.array([loss_d.item(), loss_g.item(), penalty.item()])
