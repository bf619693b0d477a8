"""``probekit experiment nad``: Neural Architecture Disentanglement (NAD; implemented from its definitions).

For each class c, a gate ``sigma(m_l)`` per channel multiplies the output of each chosen module (forward hooks,
no surgery; ``branch_gates`` adds one scalar gate per branch output). The masks start at ``m ~ N(0, 1)`` and
learn on batches of class-c training images:

    L_act  = [CE(f_m(x), c) + sum_l MSE(a~_l[I], a_l[I])] / L      (I: the images the unmasked net gets right)
    L_mask = (1/L) sum_l mean(sigma(m_l)^2)
    L      = L_act + beta L_mask,      m_l <- m_l - lr grad_l / ||grad_l||_2

The sub-architecture of class c is ``b = 1[sigma(m) > 0.5]``. Evaluations: kept fractions, the class similarity
``S_ij = mean_l IoU(b_i, b_j)``, masked accuracy of every mask on every class, the hit rate of masked CAMs on
2x2 mosaics (chance 0.25, beside the unmasked CAM), and how often a misclassification lands on one of the true
class's most similar sub-architectures (beside chance).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn
from tqdm import tqdm

from probekit.errors import ProbekitError
from probekit.models.branches import BranchSet, glob_regex
from probekit.models.classifier import classifier_layer
from probekit.run.hooks import forward_hooks
from probekit.stats.evidence import (SIGNIFICANCE, EvidenceOptions, add_evidence, describe_p, evidence_rng,
                                     smallest_adjusted_p)
from probekit.zoo.nad_checkpoints import MaskCheckpoints
from probekit.zoo.nad_evidence import mask_evidence

LAYERS_ATTR = "probekit_nad_layers"  # a model's own default gate glob (the zoo's branched ResNets name theirs)
BRANCH = "branch:"  # key prefix of the scalar branch gates


@dataclass(frozen=True)
class NadConfig:
    """What ``probekit experiment nad`` was asked (see ``docs/nad.md``)."""

    layers: str | None = None
    branch_gates: bool = False
    beta: float = 0.02
    lr: float = 0.1
    epochs: int = 1
    batch_size: int = 64
    train_per_class: int = 256
    test_per_class: int = 100
    mosaics: int = 100
    top_fraction: float = 0.1
    similar: int = 3
    seed: int = 0
    permutations: int = 99  # random masks per class (each a pass over the test images)
    resamples: int = 200
    level: float = 0.95
    correction: str = "holm"

    def check(self):
        EvidenceOptions.check(self)
        if self.beta < 0 or self.lr <= 0 or self.epochs < 1 or self.batch_size < 1:
            raise ProbekitError("nad: --beta must be >= 0, --lr > 0, --epochs and --batch-size >= 1")
        if not 0 < self.top_fraction <= 1 or self.mosaics < 0 or self.similar < 1:
            raise ProbekitError("nad: --top-fraction must be in (0, 1], --mosaics >= 0, --similar >= 1")


def with_options(config: NadConfig, options: list[str]) -> NadConfig:
    """``config`` with ``nad.KEY=VALUE`` settings applied (the option form of the flags)."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(config)}
    changes = {}
    for option in options:
        key, sep, value = option.partition("=")
        name = key.removeprefix("nad.")
        if not sep or not key.startswith("nad.") or name not in fields:
            raise ProbekitError(f"--option {option!r}: expected nad.KEY=VALUE with KEY one of {', '.join(fields)}")
        kind = type(getattr(config, name)) if getattr(config, name) is not None else str
        try:
            changes[name] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
        except ValueError:
            raise ProbekitError(f"--option {option!r}: {value!r} is not a {kind.__name__}") from None
    return dataclasses.replace(config, **changes)


def labels_of(dataset) -> np.ndarray:
    """Every sample's class index, read from the dataset's own label array when it has one."""
    for attribute in ("targets", "labels"):
        if hasattr(dataset, attribute):
            return np.asarray(getattr(dataset, attribute))
    if hasattr(dataset, "tensors"):
        return dataset.tensors[1].numpy()
    if hasattr(dataset, "indices") and hasattr(dataset, "dataset"):
        return labels_of(dataset.dataset)[np.asarray(dataset.indices)]
    return np.array([int(dataset[i][1]) for i in range(len(dataset))])


def per_class(labels: np.ndarray, classes: int, limit: int, seed: int) -> list[np.ndarray]:
    """For each class, up to ``limit`` sample indices drawn at random (seeded)."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(np.flatnonzero(labels == c))[:limit] for c in range(classes)]


def gate_paths(model: nn.Module, branchset: BranchSet | None, config: NadConfig) -> list[str]:
    """The gated modules: ``--layers`` (comma-separated globs), else the model's ``probekit_nad_layers``."""
    pattern = config.layers or getattr(model, LAYERS_ATTR, None)
    if not pattern:
        raise ProbekitError("nad needs the modules to gate: --layers GLOB[,GLOB] (e.g. 'branches.*.layer*.*')")
    regexes = [glob_regex(part.strip()) for part in pattern.split(",") if part.strip()]
    paths = [p for p, _ in model.named_modules() if p and any(r.fullmatch(p) for r in regexes)]
    if not paths:
        raise ProbekitError(f"nad: --layers {pattern!r} matches no module")
    return paths


class Gates:
    """Channel gates on module outputs ``[N, C, ...]``, by forward hooks: ``out * g`` with ``g [C]`` broadcast.

    ``keys`` are module paths, plus ``branch:<name>`` for a scalar gate on a branch module's output.
    """

    def __init__(self, model: nn.Module, paths: list[str], branches: list[tuple[str, str]]):
        self.model = model
        self.targets = {p: p for p in paths} | {BRANCH + name: module for name, module in branches}
        self.keys = list(self.targets)

    @contextlib.contextmanager
    def applied(self, gates: dict[str, torch.Tensor] | None, record: dict[str, torch.Tensor] | None = None):
        """Gate each target by ``gates[key]`` (none when ``None``) and keep each gated output in ``record``."""
        def hook(key):
            def apply(module, args, output):
                if not isinstance(output, torch.Tensor) or output.dim() < 2:
                    raise ProbekitError(f"nad: {self.targets[key]} must output a tensor [N, C, ...]")
                if gates is not None:
                    g = gates[key]
                    output = output * g.reshape(1, -1, *[1] * (output.dim() - 2))
                if record is not None and not key.startswith(BRANCH):
                    record[key] = output.clone()
                return output if gates is not None else None
            return apply

        with forward_hooks(self.model, [(self.targets[k], hook(k)) for k in self.keys]):
            yield

    def channels(self, x: torch.Tensor) -> dict[str, int]:
        """Each gate's size: the channels of each module's output (1 for a branch gate)."""
        seen: dict[str, torch.Tensor] = {}
        with torch.no_grad(), self.applied(None, seen):
            self.model(x)
        return {k: (1 if k.startswith(BRANCH) else seen[k].shape[1]) for k in self.keys}


def nad_loss(model, gates: Gates, masks: dict[str, torch.Tensor], x: torch.Tensor, c: int, beta: float):
    """``(L, L_act, L_mask)`` for class ``c`` on the batch ``x`` (see the module docstring)."""
    unmasked: dict[str, torch.Tensor] = {}
    with torch.no_grad(), gates.applied(None, unmasked):
        correct = model(x).argmax(1) == c
    masked: dict[str, torch.Tensor] = {}
    with gates.applied({k: torch.sigmoid(m) for k, m in masks.items()}, masked):
        logits = model(x)
    layers = len(masks)
    target = torch.full((len(x),), c, dtype=torch.long, device=x.device)
    match = sum((F.mse_loss(masked[k][correct], unmasked[k][correct]) for k in masked), logits.new_zeros(())) \
        if bool(correct.any()) else logits.new_zeros(())
    act = (F.cross_entropy(logits, target) + match) / layers
    mask = sum(torch.sigmoid(m).pow(2).mean() for m in masks.values()) / layers
    return act + beta * mask, act, mask


def nad_step(model, gates: Gates, masks: dict[str, torch.Tensor], x: torch.Tensor, c: int, config: NadConfig):
    """One update of every mask: ``m_l <- m_l - lr grad_l / ||grad_l||``; returns the loss before it."""
    total, act, mask = nad_loss(model, gates, masks, x, c, config.beta)
    grads = torch.autograd.grad(total, list(masks.values()), allow_unused=True)
    with torch.no_grad():
        for m, g in zip(masks.values(), grads, strict=True):
            if g is not None and float(g.norm()) > 0:
                m -= config.lr * g / g.norm()
    return total.item(), act.item(), mask.item()


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The usual augmentation for RGB images: a random crop after padding by 1/8 of the side, and a random
    horizontal flip; other inputs (8x8 digits, one channel) are left as they are."""
    if x.dim() != 4 or x.shape[1] != 3:
        return x
    pad = max(1, x.shape[-1] // 8)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    out = torch.empty_like(x)
    for i in range(len(x)):
        top, left = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=generator))
        crop = padded[i, :, top:top + x.shape[2], left:left + x.shape[3]]
        out[i] = crop.flip(-1) if bool(torch.rand((), generator=generator) < 0.5) else crop
    return out


def learn_masks(model, gates: Gates, channels: dict[str, int], images: torch.Tensor, c: int, config: NadConfig,
                progress) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Masks of class ``c`` learnt on its training ``images``; the loss of every step."""
    generator = torch.Generator().manual_seed(config.seed * 1000 + c)
    masks = {k: torch.randn(n, generator=generator, dtype=images.dtype).requires_grad_(True)
             for k, n in channels.items()}
    losses = []
    for _ in range(config.epochs):
        for idx in torch.randperm(len(images), generator=generator).split(config.batch_size):
            losses.append(nad_step(model, gates, masks, augment(images[idx], generator), c, config)[0])
            progress.update(1)
    return {k: m.detach() for k, m in masks.items()}, losses


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean vectors (1 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def similarity(hard: list[dict[str, np.ndarray]], keys: list[str]) -> np.ndarray:
    """``S_ij = mean_l IoU(b_i,l, b_j,l)`` over the channel gates."""
    n = len(hard)
    return np.array([[np.mean([iou(hard[i][k], hard[j][k]) for k in keys]) for j in range(n)] for i in range(n)])


def predictions(model, gates: Gates, hard: dict[str, torch.Tensor] | None, x: torch.Tensor, batch: int) -> np.ndarray:
    """Predicted classes of ``x`` under the hard mask ``hard`` (the unmasked model when ``None``)."""
    out = []
    with torch.no_grad(), gates.applied(hard):
        for part in x.split(batch):
            out.append(model(part).argmax(1).numpy())
    return np.concatenate(out)


def mosaic_hits(model, gates: Gates, hard: list[dict[str, torch.Tensor]], tests: list[torch.Tensor],
                config: NadConfig, keys: list[str]) -> tuple[np.ndarray, np.ndarray, str]:
    """``(hit rate [L], unmasked hit rate [L], note)`` of the masked CAMs on 2x2 mosaics of four classes: the
    share of each CAM's top pixels inside its class's quadrant (NaN with a note when the model refuses mosaics)."""
    rng = np.random.default_rng(config.seed)
    usable = [c for c, x in enumerate(tests) if len(x)]
    if config.mosaics == 0 or len(usable) < 4:
        return np.full(len(keys), np.nan), np.full(len(keys), np.nan), "no mosaics (fewer than 4 classes)"
    hits, plain = np.zeros(len(keys)), np.zeros(len(keys))
    for _ in range(config.mosaics):
        chosen = rng.choice(usable, 4, replace=False)
        tiles = [tests[c][rng.integers(len(tests[c]))] for c in chosen]
        mosaic = torch.cat([torch.cat(tiles[:2], 2), torch.cat(tiles[2:], 2)], 1).unsqueeze(0)
        try:
            maps = [_cams(model, gates, hard[c], mosaic, keys) for c in chosen]
            unmasked = _cams(model, gates, None, mosaic, keys)
        except ProbekitError:
            raise
        except Exception as exc:  # e.g. a Linear layer that needs the training size
            return (np.full(len(keys), np.nan), np.full(len(keys), np.nan),
                    f"the model does not take 2x2 mosaics ({str(exc).splitlines()[0][:120]})")
        for quadrant, cams in enumerate(maps):
            hits += [_quadrant_share(cam, quadrant, config.top_fraction) for cam in cams]
            plain += [_quadrant_share(cam, quadrant, config.top_fraction) for cam in unmasked]
    count = 4 * config.mosaics
    return hits / count, plain / count, ""


def _cams(model, gates: Gates, hard, mosaic: torch.Tensor, keys: list[str]) -> list[torch.Tensor]:
    """Per gated layer, the channel sum of its (masked) output, min-max scaled, at the mosaic's size."""
    record: dict[str, torch.Tensor] = {}
    with torch.no_grad(), gates.applied(hard, record):
        model(mosaic)
    cams = []
    for k in keys:
        out = record[k]
        if out.dim() != 4:
            raise ProbekitError(f"nad: mosaics need [N, C, H, W] outputs; {k} gives {tuple(out.shape)}")
        cam = out[0].sum(0)
        cam = (cam - cam.min()) / (cam.max() - cam.min()).clamp_min(1e-12)
        cams.append(F.interpolate(cam[None, None], size=mosaic.shape[-2:], mode="bilinear",
                                  align_corners=False)[0, 0])
    return cams


def _quadrant_share(cam: torch.Tensor, quadrant: int, fraction: float) -> float:
    """Share of the top ``fraction`` pixels of ``cam`` that fall in ``quadrant`` (0 top-left, 1 top-right,
    2 bottom-left, 3 bottom-right)."""
    h, w = cam.shape
    top = cam.flatten().topk(max(1, int(round(fraction * cam.numel())))).indices
    rows, cols = top // w, top % w
    inside = ((rows >= h // 2) == (quadrant >= 2)) & ((cols >= w // 2) == (quadrant % 2 == 1))
    return float(inside.float().mean())


def branch_class_scores(model, branchset: BranchSet | None, tests: list[torch.Tensor]) -> np.ndarray | None:
    """``[C, K]`` mean ``softmax(v_k(x))[c]`` over class c's test images for a summed classifier (the
    ``specialization`` class profile), else ``None``."""
    layer = classifier_layer(branchset) if branchset is not None else None
    if layer is None:
        return None
    from probekit.run.capture import capture

    scores = np.zeros((len(tests), len(layer.branches)))
    with torch.no_grad(), capture(model, branchset) as recorder:
        for c, x in enumerate(tests):
            if len(x):
                model(x)
                scores[c] = recorder.take()[layer.name].softmax(2)[:, :, c].mean(0).numpy()
    return scores


def run_nad(model: nn.Module, branchset: BranchSet | None, train, test, config: NadConfig,
            progress: bool = True, checkpoints: MaskCheckpoints | None = None) -> xr.Dataset:
    """Learn every class's masks (each class's read from ``checkpoints`` when an earlier run saved it there) and
    evaluate them; the ``nad`` node."""
    config.check()
    classes = train.classes
    if not classes or test.classes != classes:
        raise ProbekitError("nad needs train and test data with the same classes")
    torch.manual_seed(config.seed)
    train_idx = per_class(labels_of(train.dataset), len(classes), config.train_per_class, config.seed)
    test_idx = per_class(labels_of(test.dataset), len(classes), config.test_per_class, config.seed + 1)
    trains = [_images(train, idx) for idx in train_idx]
    tests = [_images(test, idx) for idx in test_idx]
    branches = [(name, module) for layer in branchset.layers for name, module in
                zip(layer.branches, layer.modules, strict=True)] if config.branch_gates and branchset else []
    if config.branch_gates and not branches:
        raise ProbekitError("nad --branch-gates needs a model with branch modules")
    for p in model.parameters():
        p.requires_grad_(False)
    gates = Gates(model, gate_paths(model, branchset, config), branches)
    first = next(x for x in trains if len(x))
    channels = gates.channels(first[:2])
    steps = sum(-(-len(x) // config.batch_size) for x in trains) * config.epochs
    bar = tqdm(total=steps, desc="nad: learning masks", unit="step", disable=not progress or None)
    soft, losses = [], []
    for c, images in enumerate(trains):
        saved = checkpoints.load(c) if checkpoints else None
        if saved is not None:
            masks, curve = saved
            bar.update(-(-len(images) // config.batch_size) * config.epochs)
        elif len(images):
            masks, curve = learn_masks(model, gates, channels, images, c, config, bar)
        else:
            masks, curve = {k: torch.zeros(n) for k, n in channels.items()}, []
        if checkpoints and saved is None:
            checkpoints.save(c, masks, curve)
        soft.append({k: torch.sigmoid(m) for k, m in masks.items()})
        losses.append(curve)
    bar.close()
    return _evaluate(model, gates, channels, soft, losses, trains, tests, branchset, branches, classes, config,
                     progress)


def _images(data, indices: np.ndarray) -> torch.Tensor:
    """The inputs of ``data`` at ``indices``, stacked (empty when there are none)."""
    return torch.stack([data.dataset[int(i)][0] for i in indices]) if len(indices) else torch.empty(0)


def _evaluate(model, gates, channels, soft, losses, trains, tests, branchset, branches, classes, config, progress):
    keys = [k for k in gates.keys if not k.startswith(BRANCH)]
    hard = [{k: (s > 0.5).float() for k, s in masks.items()} for masks in soft]
    bools = [{k: h.numpy() > 0.5 for k, h in masks.items()} for masks in hard]
    n = len(classes)
    kept = np.array([[bools[c][k].mean() for k in keys] for c in range(n)])
    sim = similarity(bools, keys)
    everything = torch.cat([x for x in tests if len(x)])
    labels = np.concatenate([[j] * len(x) for j, x in enumerate(tests)]).astype(np.int64)
    found = mask_evidence(lambda mask: predictions(model, gates, mask, everything, config.batch_size), hard, labels,
                          config.permutations, config.resamples, config.level, evidence_rng(config.seed, "nad"),
                          progress)
    onehot = np.eye(n)[labels]
    present = onehot.sum(0) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        masked = np.where(present, (found["predicted"] == labels[None]) @ onehot / onehot.sum(0), np.nan)
        predicted_as = np.where(present, (found["predicted"] == np.arange(n)[:, None]) @ onehot / onehot.sum(0),
                                np.nan)
    unmasked = [predictions(model, gates, None, x, config.batch_size) if len(x) else None for x in tests]
    original = np.array([float((p == j).mean()) if p is not None else np.nan for j, p in enumerate(unmasked)])
    hit, hit_plain, mosaic_note = mosaic_hits(model, gates, hard, tests, config, keys)
    wrong_similar, wrong_count = _misclassified(unmasked, sim, config.similar)
    gate_key = np.concatenate([[k] * channels[k] for k in keys])
    ds = xr.Dataset(
        {
            "mask": (("cls", "gate"), np.stack([np.concatenate([soft[c][k].numpy() for k in keys])
                                                for c in range(n)]), {
                "long_name": "gate value sigma(m)", "units": "1"}),
            "kept": (("cls", "layer"), kept, {"long_name": "kept fraction", "units": "1",
                                                 "description": "share of the layer's gates with sigma(m) > 0.5"}),
            "similarity": (("cls", "cls_other"), sim, {
                "long_name": "sub-architecture similarity", "units": "1", "description": "mean over layers of IoU"}),
            "masked_accuracy": (("cls", "cls_other"), masked, {
                "long_name": "masked accuracy", "units": "1",
                "description": "accuracy on class cls_other's test images with class cls's hard mask"}),
            "original_accuracy": ("cls", original, {"long_name": "unmasked accuracy per class", "units": "1"}),
            "predicted_as": (("cls", "cls_other"), predicted_as, {
                "long_name": "share predicted as the mask's class", "units": "1",
                "description": "share of class cls_other's test images predicted as cls under class cls's hard mask"}),
            "separation": ("cls", found["measures"][:-1, 0], {
                "long_name": "class separation of the mask (Youden's J)", "units": "1",
                "description": "share of the class's test images predicted as the class under its mask, minus the "
                               "share of the other classes' images predicted as the class (bias): 0 for a mask that "
                               "calls everything its class"}),
            "bias": ("cls", found["measures"][:-1, 1], {
                "long_name": "bias of the mask toward its class", "units": "1",
                "description": "share of the other classes' test images predicted as the mask's class"}),
            "random_mask_accuracy": ("cls", found["random_accuracy"], {
                "long_name": "accuracy on the class's images under random masks of the same size", "units": "1",
                "description": "mean over the null's random masks (as many gates kept per layer, random channels)"}),
            "hit_rate": ("layer", hit, {"long_name": "mosaic hit rate of the masked CAM", "units": "1",
                                        "description": f"share of the top {config.top_fraction:g} CAM pixels in "
                                                       "the class's quadrant; chance 0.25"}),
            "hit_rate_unmasked": ("layer", hit_plain, {
                "long_name": "mosaic hit rate of the unmasked CAM (baseline)", "units": "1"}),
            "loss": (("cls", "step"), _padded(losses), {"long_name": "NAD loss L per step", "units": "nats",
                                                       "description": "NaN after a class's last step"}),
        },
        coords={"cls": ("cls", np.arange(n)), "class_name": ("cls", np.array(classes, dtype=object)),
                "cls_other": ("cls_other", np.arange(n)), "layer": ("layer", np.array(keys, dtype=object)),
                "gate": ("gate", np.arange(len(gate_key))), "gate_layer": ("gate", gate_key.astype(object)),
                "step": ("step", np.arange(max((len(c) for c in losses), default=0)))},
        attrs={"beta": config.beta, "lr": config.lr, "epochs": config.epochs, "batch_size": config.batch_size,
               "train_per_class": config.train_per_class, "test_per_class": config.test_per_class,
               "mosaics": config.mosaics, "mosaic_note": mosaic_note,
               "misclassified": wrong_count, "misclassified_to_similar": wrong_similar,
               "misclassified_chance": min(1.0, config.similar / max(n - 1, 1)), "similar": config.similar,
               "seed": config.seed},
    )
    null = "each class's mask replaced by a random mask keeping as many gates in every layer, at random channels"
    for k, name in enumerate(("separation", "bias")):
        pooled = f"mean_{name}"
        ds[pooled] = ((), found["measures"][-1, k], {"long_name": f"{name} averaged over the classes",
                                                      "units": "1", "description": "one pooled test of every mask"})
        for stat, rows, dims, correction in ((name, slice(0, -1), ("cls",), "options"), (pooled, -1, (), None)):
            ds = add_evidence(ds, stat, dims, {key: found[key][rows, k] for key in ("p", "null", "band", "ci")},
                              config, permuted=null, correction=correction, resampled="test images")
    return _with_branches(ds, soft, bools, keys, branchset, branches, model, tests)


def _with_branches(ds, soft, bools, keys, branchset, branches, model, tests):
    """Per-branch kept fractions (gates inside each branch module), branch gates, and branch class profiles."""
    if branchset is None:
        return ds
    names = [name for layer in branchset.layers for name in layer.branches]
    modules = [module for layer in branchset.layers for module in layer.modules]
    inside = [[k for k in keys if k.startswith(f"{m}.")] for m in modules]
    if any(inside):
        kept = np.array([[np.concatenate([b[k] for k in ks]).mean() if ks else np.nan for ks in inside]
                         for b in bools])
        ds = ds.assign_coords(branch=("branch", np.array(names, dtype=object))).assign(
            kept_branch=(("cls", "branch"), kept, {"long_name": "kept fraction of the branch's gates", "units": "1"}))
    if branches:
        ds = ds.assign_coords(branch=("branch", np.array(names, dtype=object))).assign(
            branch_gate=(("cls", "branch"), np.array([[float(s[BRANCH + name]) for name in names] for s in soft]), {
                "long_name": "branch gate sigma(m)", "units": "1"}))
    scores = branch_class_scores(model, branchset, tests)
    if scores is not None and "branch" in ds.coords:
        ds = ds.assign(branch_class_score=(("cls", "branch"), scores, {
            "long_name": "branch's mean confidence in the class alone (specialization's profile)", "units": "1"}))
    return ds


def _misclassified(unmasked: list[np.ndarray | None], sim: np.ndarray, similar: int) -> tuple[float, int]:
    """Share of misclassified test images (``unmasked[j]``: the predictions on class j's images) whose prediction
    is among the true class's ``similar`` most similar classes."""
    hits = total = 0
    for j, predicted in enumerate(unmasked):
        if predicted is None:
            continue
        others = [c for c in np.argsort(-sim[j], kind="stable") if c != j][:similar]
        wrong = predicted[predicted != j]
        hits += int(np.isin(wrong, others).sum())
        total += len(wrong)
    return (hits / total if total else float("nan")), total


def _evidence_summary(ds: xr.Dataset) -> dict:
    """Separation and bias beside their random-mask null, and how many classes beat it."""
    out = {}
    for name in ("separation", "bias"):
        if f"{name}_p_adjusted" not in ds:
            continue
        adjusted = ds[f"{name}_p_adjusted"]
        floor = smallest_adjusted_p(ds[f"{name}_p"].attrs["permutations"], ds.sizes["cls"],
                                    adjusted.attrs["correction"])
        out[f"{name}, mean over classes (random masks of the same size)"] = (
            f"{float(ds[f'mean_{name}']):.3f} ({float(ds[f'mean_{name}_null']):.3f}): "
            f"{describe_p(float(ds[f'mean_{name}_p']), label='p')} (one pooled test)")
        out[f"classes whose {name} is beyond the null"] = (
            f"{int((adjusted.values < SIGNIFICANCE).sum())} of {ds.sizes['cls']} ({adjusted.attrs['correction']}-"
            f"adjusted p < {SIGNIFICANCE}; the smallest attainable is {floor:.3g})")
    if "random_mask_accuracy" in ds and np.isfinite(ds.random_mask_accuracy.values).any():
        out["own-class accuracy under random masks of the same size"] = round(
            float(np.nanmean(ds.random_mask_accuracy.values)), 4)
    return out


def _padded(curves: list[list[float]]) -> np.ndarray:
    width = max((len(c) for c in curves), default=0)
    return np.array([c + [np.nan] * (width - len(c)) for c in curves], dtype=np.float64).reshape(len(curves), width)


def summary(ds: xr.Dataset) -> dict:
    diagonal = np.diag(ds.masked_accuracy.values)
    off = ds.masked_accuracy.values[~np.eye(len(diagonal), dtype=bool)]
    return {
        "kept fraction (mean over classes and layers)": round(float(ds.kept.mean()), 4),
        "masked accuracy, own class / other classes": f"{np.nanmean(diagonal):.3f} / {np.nanmean(off):.3f}",
        "unmasked accuracy": round(float(np.nanmean(ds.original_accuracy.values)), 4),
        **_evidence_summary(ds),
        "mosaic hit rate (best layer), unmasked, chance": (
            f"{np.nanmax(ds.hit_rate.values):.3f}, {np.nanmax(ds.hit_rate_unmasked.values):.3f}, 0.25"
            if np.isfinite(ds.hit_rate.values).any() else ds.attrs["mosaic_note"]),
        "misclassified into a similar class": (f"{ds.attrs['misclassified_to_similar']:.3f} of "
                                               f"{ds.attrs['misclassified']} (chance "
                                               f"{ds.attrs['misclassified_chance']:.3f})"),
    }
