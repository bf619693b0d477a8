"""How block-diagonal a matrix is over named blocks of its rows and columns (the Hessian's branch blocks)."""

from __future__ import annotations

import numpy as np


def off_block_share(h: np.ndarray, slices: dict[str, slice]) -> float:
    """``|H - blockdiag(H)|_F^2 / |H|_F^2`` for a square ``h [P, P]`` and its diagonal blocks ``slices`` (NaN for
    H = 0)."""
    total = float((h ** 2).sum())
    within = sum(float((h[s, s] ** 2).sum()) for s in slices.values())
    return (total - within) / total if total > 0 else float("nan")
