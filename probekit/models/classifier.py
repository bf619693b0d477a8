"""Summed branches that are classifiers: each branch outputs class scores ``[N, C]``."""

from __future__ import annotations

from probekit.models.branches import BranchLayer, BranchSet
from probekit.errors import ProbekitError


def classifier_layer(branchset: BranchSet) -> BranchLayer | None:
    """The summed (or gated: ``f = sum_k g_k e_k``) layer at the model's root (``f = sum_k v_k``), or ``None``."""
    for layer in branchset.layers:
        if layer.kind in ("sum", "gated") and layer.container == "":
            return layer
    return None


def require_classifier(branchset: BranchSet, classes: list[str] | None, analysis: str) -> BranchLayer:
    """The root summed layer, or one clear error saying what ``analysis`` needs."""
    layer = classifier_layer(branchset)
    if layer is None:
        raise ProbekitError(f"{analysis} needs a classifier made of summed branches at the model's root "
                            f"(f = sum_k v_k); this model's branches were found by {branchset.strategy}")
    if not classes:
        raise ProbekitError(f"{analysis} needs data with classes")
    return layer


class BranchScores:
    """Per-sample scores of every branch, for the class analyses (``specialization``, ``intra-class``).

    ``mode == 'classifier'`` (a summed or gated classifier at the root): the branch's
    true-class score ``v_k(x)[y]`` and its confidence alone,
    ``softmax(v_k(x))[y]``. ``mode == 'responses'`` (any other branches, e.g.
    the grouped convs of a ResNeXt): both are the norm of the branch's
    response, so "which samples and classes a branch responds to most".
    """

    def __init__(self, branchset: BranchSet, classes: list[str] | None, analysis: str):
        if not classes:
            raise ProbekitError(f"{analysis} needs data with classes")
        layer = classifier_layer(branchset)
        self.mode = "classifier" if layer is not None else "responses"
        self.layers = (layer,) if layer is not None else branchset.layers
        self.names = [name for layer in self.layers for name in layer.branches]
        self.n_classes = len(classes)

    def __call__(self, batch, targets) -> tuple:
        """``(score, confidence)``, each ``[N, B]``, for a batch and its ``[N]`` integer targets."""
        import torch

        if self.mode == "responses":
            norms = torch.cat([batch.responses[layer.name].norm(dim=2) for layer in self.layers], 1)
            return norms, norms
        v = batch.responses[self.layers[0].name]  # [N, K, C]
        if v.shape[2] != self.n_classes:
            raise ProbekitError(f"the branches output {v.shape[2]} scores but the data has {self.n_classes} classes")
        pick = targets.view(-1, 1, 1).expand(-1, v.shape[1], 1)
        return v.gather(2, pick).squeeze(2), v.softmax(2).gather(2, pick).squeeze(2)

    def layer_slices(self):
        """``(layer, slice of its branches in the branch axis)`` for each layer."""
        start = 0
        for layer in self.layers:
            yield layer, slice(start, start + len(layer.branches))
            start += len(layer.branches)
