"""Summed branches that are classifiers: each branch outputs class scores ``[N, C]``."""

from __future__ import annotations

from .branches import BranchLayer, BranchSet
from .errors import ProbekitError


def classifier_layer(branchset: BranchSet) -> BranchLayer | None:
    """The summed layer at the model's root (``f = sum_k v_k``), or ``None``."""
    for layer in branchset.layers:
        if layer.kind == "sum" and layer.container == "":
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
