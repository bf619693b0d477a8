"""Multiple-comparison corrections of p-values: Holm (family-wise error) and Benjamini-Hochberg (false discovery
rate, scipy's implementation)."""

from __future__ import annotations

import numpy as np
from scipy.stats import false_discovery_control

CORRECTIONS = ("holm", "bh", "none")


def adjust_p(p: np.ndarray, method: str = "holm") -> np.ndarray:
    """Adjusted p-values of one family of tests ``p [...]`` (every finite entry is one test; NaN stays NaN).

    ``holm``: Holm's step-down adjustment, ``max_{j <= i} min(1, (m - j + 1) p_(j))``; ``bh``: Benjamini-Hochberg;
    ``none``: unchanged."""
    if method not in CORRECTIONS:
        raise ValueError(f"correction must be one of {', '.join(CORRECTIONS)}, not {method!r}")
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    values = p[finite]
    if not values.size or method == "none":
        out[finite] = values
        return out
    if method == "bh":
        out[finite] = false_discovery_control(values, method="bh")
        return out
    order = np.argsort(values, kind="stable")
    m = len(values)
    stepped = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * values[order]))
    adjusted = np.empty(m)
    adjusted[order] = stepped
    out[finite] = adjusted
    return out
