"""Evidence for NAD's masks: how much a class's mask biases the prediction toward its class, how well it
separates its class from the others (Youden's J, so that a mask that calls everything its class scores 0), each
against random masks of the same size.

``predicted [masks, M]`` holds the predicted class of each of the M test images under each mask and ``labels
[M]`` their classes. The null draws, for class c, masks that keep the same number of gates in every layer as
c's mask, at random places: it keeps how much of the network is left and breaks only which channels.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from probekit.stats.bootstrap import bootstrap_ci
from probekit.stats.permutation import summarise_null

Predict = Callable[[dict[str, torch.Tensor]], np.ndarray]  # a hard mask -> predicted classes [M] of the test images


def random_mask_like(hard: dict[str, torch.Tensor], rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """A 0/1 mask with as many ones as ``hard`` in every gated module, at uniformly random channels."""
    out = {}
    for key, mask in hard.items():
        flat = mask.flatten().numpy()
        drawn = np.zeros_like(flat)
        drawn[rng.permutation(len(flat))[:int((flat > 0.5).sum())]] = 1
        out[key] = torch.from_numpy(drawn).reshape(mask.shape)
    return out


def class_measures(predicted: np.ndarray, owner: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """``[masks, 2]``: for each mask (of class ``owner[i]``), its ``separation`` (Youden's J: the share of its
    class's images predicted as its class minus the share of the other classes' images predicted as its class; 0
    for a mask that predicts its class for everything) and its ``bias`` (that second share)."""
    onehot = np.eye(n_classes)[labels]  # [M, C]
    count = np.maximum(onehot.sum(0), 1)
    as_owner = (predicted == owner[:, None]).astype(np.float64) @ onehot / count  # [masks, C]
    others = 1 - np.eye(n_classes)[owner]
    bias = (as_owner * others).sum(1) / max(n_classes - 1, 1)
    own = as_owner[np.arange(len(owner)), owner]
    return np.stack([own - bias, bias], axis=1)


def mask_evidence(predict: Predict, hard: list[dict[str, torch.Tensor]], labels: np.ndarray, permutations: int,
                  resamples: int, level: float, rng: np.random.Generator, progress: bool = True) -> dict:
    """Every class's mask against ``permutations`` random masks of its size: ``{"measures": [C + 1, 2]``
    (separation, bias; the last row their mean over the classes, tested as one pooled statistic), ``"p"``,
    ``"null"``: the same shape, ``"band"``: the null's central 95% ``[C + 1, 2, 2]``, ``"ci": [C + 1, 2, 2]``
    (bootstrap over test images), ``"random_accuracy": [C]`` (mean accuracy on the class's own images under the
    random masks), ``"predicted": [C, M]``}."""
    n = len(hard)
    owner = np.arange(n)
    predicted = np.stack([predict(h) for h in hard])

    def with_mean(measures: np.ndarray) -> np.ndarray:
        return np.concatenate([measures, measures.mean(0, keepdims=True)])

    observed = with_mean(class_measures(predicted, owner, labels, n))
    own_images = labels[None, :] == owner[:, None]
    null, random_accuracy = [], np.zeros(n)
    for _ in tqdm(range(permutations), desc="nad: random masks", unit="draw", leave=False,
                  disable=not progress or None):
        drawn = np.stack([predict(random_mask_like(h, rng)) for h in hard])
        null.append(with_mean(class_measures(drawn, owner, labels, n)))
        random_accuracy += ((drawn == owner[:, None]) & own_images).sum(1) / np.maximum(own_images.sum(1), 1)
    found = summarise_null(observed, np.stack(null) if permutations else None)
    ci = bootstrap_ci(lambda rows: with_mean(class_measures(predicted[:, rows], owner, labels[rows], n)), len(labels),
                      resamples, rng, level)
    return {"measures": observed, **found, "ci": ci, "predicted": predicted,
            "random_accuracy": random_accuracy / permutations if permutations else np.full(n, np.nan)}
