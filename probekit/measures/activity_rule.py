"""The paper's activity rule (Fig. 4): a branch is active when its response norm is at least a threshold
(10%) times the largest branch's norm, with NaN meaning "unknown", never a confident answer.

A NaN or Inf norm anywhere in a group makes every relative norm of that group
NaN: the broken branch might be the largest, so no branch's share is known.
"""

from __future__ import annotations

import numpy as np


def relative_norms(norm: np.ndarray) -> np.ndarray:
    """``norm [..., B]`` divided by its largest entry along the last axis; NaN where any entry is NaN/Inf,
    0 where the largest is 0."""
    norm = np.asarray(norm, dtype=np.float64)
    finite = np.isfinite(norm).all(axis=-1, keepdims=True)
    peak = np.where(finite, norm, 0).max(axis=-1, keepdims=True)
    out = np.divide(norm, peak, out=np.zeros_like(norm), where=finite & (peak > 0))
    return np.where(finite, out, np.nan)


def active_flags(relative: np.ndarray, threshold: float) -> np.ndarray:
    """1.0 active (``relative >= threshold``), 0.0 silent, NaN unknown (``relative`` is NaN)."""
    relative = np.asarray(relative, dtype=np.float64)
    return np.where(np.isnan(relative), np.nan, (relative >= threshold).astype(np.float64))


def count_flags(flags: np.ndarray) -> tuple[float, float]:
    """``(active, silent)`` counts of a flag array; both NaN when any flag is unknown."""
    if np.isnan(flags).any():
        return float("nan"), float("nan")
    return float(flags.sum()), float(len(flags) - flags.sum())


def describe_count(active: float, total: int) -> str:
    """``"3/5"``, or ``"unknown/5 (NaN/Inf responses)"``."""
    return f"{int(active)}/{total}" if np.isfinite(active) else f"unknown/{total} (NaN/Inf responses)"
