"""``probekit evaluate``: accuracy overall, per class, and of each branch acting alone."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm  # (renders as a widget in a notebook)

from probekit.models.branches import BranchSet, DiscoveryConfig, discover
from probekit.run.capture import capture
from probekit.models.classifier import classifier_layer
from probekit.run.data import batches, load_data
from probekit.errors import ProbekitError, escape
from probekit.models.loading import LoadOptions, load_model


@dataclass
class Evaluation:
    """Counts of correct predictions: overall, per class ``[C]`` and per branch alone ``[B]``."""

    n: int
    correct: int
    class_names: list[str]
    class_total: np.ndarray
    class_correct: np.ndarray
    branch_names: list[str]
    branch_correct: np.ndarray

    def table(self) -> str:
        lines = [f"accuracy: {self.correct / self.n:.4f} ({self.correct}/{self.n})", "", "per class:"]
        for name, total, correct in zip(self.class_names, self.class_total, self.class_correct, strict=True):
            lines.append(f"  {name:12s} {correct / max(total, 1):.4f} ({correct}/{total})")
        if self.branch_names:
            lines += ["", "per branch alone (argmax of the branch's own output):"]
            for name, correct in zip(self.branch_names, self.branch_correct, strict=True):
                lines.append(f"  {name:20s} {correct / self.n:.4f}")
        else:
            lines += ["", "per branch alone: n/a (no summed branches whose outputs are class scores)"]
        return "\n".join(escape(line) for line in lines)  # class names may come from the model file


def classifier_branches(model) -> BranchSet | None:
    """The summed layer at the model's root (its branches output class scores) as a branch set, if any."""
    try:
        branchset = discover(model, DiscoveryConfig())
    except ProbekitError:
        return None
    layer = classifier_layer(branchset)
    return BranchSet((layer,), branchset.strategy) if layer is not None else None


def evaluate(model_spec: str, data_spec: str, load: LoadOptions | None = None, batch_size: int = 256,
             limit: int | None = None, device: str = "cpu", progress: bool = True) -> Evaluation:
    """Score ``model_spec`` on ``data_spec`` in one pass (per-branch scores come from forward hooks)."""
    load = load or LoadOptions()
    data = load_data(data_spec)
    if not data.classes:
        raise ProbekitError(f"data {data_spec!r} has no classes to score against")
    model = load_model(model_spec, load).module.to(device)
    branchset = classifier_branches(model)
    classes = len(data.classes)
    n = correct = 0
    class_total, class_correct = np.zeros(classes, np.int64), np.zeros(classes, np.int64)
    branch_correct = np.zeros(len(branchset) if branchset else 0, np.int64)
    with torch.no_grad(), capture(model, branchset) if branchset else nullcontext() as recorder:
        loader = data.loader(batch_size, limit)
        bar = tqdm(batches(loader), total=len(loader), desc="evaluating", unit="batch", disable=not progress or None)
        for _, x, y in bar:
            x, y = x.to(device), y.to(device)
            try:
                hit = model(x).argmax(1) == y
            except RuntimeError as exc:
                raise ProbekitError(f"data {data.name} does not fit model {model_spec}: "
                                    f"{str(exc).splitlines()[0]}") from exc
            n, correct = n + len(y), correct + int(hit.sum())
            class_total += np.bincount(y.cpu().numpy(), minlength=classes)
            class_correct += np.bincount(y[hit].cpu().numpy(), minlength=classes)
            if recorder is not None:
                responses = next(iter(recorder.take().values()))  # [N, K, D]
                if responses.shape[2] != classes:
                    raise ProbekitError(f"the branches output {responses.shape[2]} values, not {classes} class "
                                        "scores: per-branch accuracy is undefined")
                branch_correct += (responses.argmax(2) == y[:, None]).sum(0).cpu().numpy()
    return Evaluation(n, correct, list(data.classes), class_total, class_correct,
                      branchset.names if branchset else [], branch_correct)

