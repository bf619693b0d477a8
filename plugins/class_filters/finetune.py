"""Fine-tuning the decomposed head, as the class-specific-filter reference does after decomposing, on features
held fixed: only the weights on each class's filters and the biases learn.

``logit_c = sum_{j in I_c} V_cj h_j + b_c`` starts from the head's weights (``V_cj = W_cj``) and bias, and learns
with Adam (the reference's optimiser and its learning rate 2e-4 by default) on cross-entropy. The reference
fine-tunes on the training split and validates on another; a probe has one set of samples, so the accuracy is
cross-fitted: the samples split in two halves at random (seeded), each half scored by the head fine-tuned on the
other. Unlike the reference, the network below the features is not fine-tuned (a probe does not change the model).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm  # (renders as a widget in a notebook)


def finetuned_accuracy(features: np.ndarray, targets: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                       filters: dict[int, np.ndarray], epochs: int, lr: float, batch: int,
                       rng: np.random.Generator) -> dict[int, float]:
    """Cross-fitted accuracy of the fine-tuned decomposed head for each k. ``features [N, D]``, ``targets [N]``,
    ``weight [C, D]``, ``bias [C]``, ``filters`` k -> ``[C, k]`` feature indices."""
    order = rng.permutation(len(features))
    halves = [order[: len(order) // 2], order[len(order) // 2:]]
    seed = int(rng.integers(2**31))
    h = torch.as_tensor(features, dtype=torch.float32)
    y = torch.as_tensor(targets, dtype=torch.long)
    correct = dict.fromkeys(filters, 0)
    bar = tqdm(total=len(filters) * 2 * epochs, desc="class-filters fine-tune", unit="epoch", leave=False,
               disable=None)
    for k, chosen in filters.items():
        index = torch.as_tensor(chosen, dtype=torch.long)  # [C, k]
        for held, trained in (halves, halves[::-1]):
            v, b = _finetune(h[trained][:, index], y[trained], weight, bias, chosen, epochs, lr, batch, seed, bar)
            with torch.no_grad():
                logits = (h[held][:, index] * v).sum(-1) + b
            correct[k] += int((logits.argmax(1) == y[held]).sum())
    bar.close()
    return {k: count / max(len(features), 1) for k, count in correct.items()}


def _finetune(picked: torch.Tensor, y: torch.Tensor, weight: np.ndarray, bias: np.ndarray, chosen: np.ndarray,
              epochs: int, lr: float, batch: int, seed: int, bar) -> tuple[torch.Tensor, torch.Tensor]:
    """``(V [C, k], b [C])`` after ``epochs`` of Adam on ``picked [n, C, k]`` (each class's filters' values)."""
    v = torch.as_tensor(np.take_along_axis(weight, chosen, axis=1), dtype=torch.float32).requires_grad_(True)
    b = torch.as_tensor(bias, dtype=torch.float32).clone().requires_grad_(True)
    optimiser = torch.optim.Adam([v, b], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for rows in torch.randperm(len(picked), generator=generator).split(batch):
            loss = F.cross_entropy((picked[rows] * v).sum(-1) + b, y[rows])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        bar.update(1)
    return v.detach(), b.detach()
