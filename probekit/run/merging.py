"""How analyses combine streaming state computed on disjoint shards of the samples (exactly).

An analysis lists its state attributes in ``merge_rules`` (``None``: not
declared, so it cannot run distributed). Rules:

* ``"sum"``: tensors, arrays, numbers, or dicts of them, added;
* ``"max"``, ``"min"``: the same, elementwise extremes;
* ``"rows"``: per-sample arrays ``[n_samples, ...]`` each shard fills in its
  own rows; the other shard's rows are copied in;
* ``"compensated-sum"``: float sums kept as ``[2, ...]`` float64 pairs (value, rounding error) by
  :func:`compensated_add`; merged with the error carried, so the result (:func:`compensated_value`) is the
  correctly rounded sum whatever the order and sharding, bitwise equal across ``--nproc`` and one process
  (unless the exact sum lies within about 2^-100 of its value from a rounding boundary);
* ``"custom"``: the analysis's ``merge_<attribute>(mine, theirs)`` combines them
  (top-k lists, kept samples), and must be associative and order-independent.

``None`` is the state of a shard that saw nothing yet: merging with it is the identity.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

RULES = ("sum", "max", "min", "rows", "compensated-sum", "custom")


def _two_sum(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, e)`` with ``s = fl(a + b)`` and ``s + e = a + b`` exactly (Knuth's TwoSum)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def compensated_add(state: torch.Tensor | None, values: torch.Tensor) -> torch.Tensor:
    """Add ``values`` (any float tensor) to a compensated sum ``[2, *values.shape]`` (float64 value and rounding
    error; ``None``: empty). Returns the new state."""
    values = values.double()
    if state is None:
        return torch.stack([values, torch.zeros_like(values)])
    high, error = _two_sum(state[0], values)
    return torch.stack(_two_sum(high, state[1] + error))


def compensated_value(state: torch.Tensor) -> torch.Tensor:
    """The sum a compensated state holds, as float64."""
    return state[0] + state[1]


def _merge_compensated(mine: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
    high, error = _two_sum(mine[0], theirs[0])
    return torch.stack(_two_sum(high, mine[1] + theirs[1] + error))


def _maximum(a, b):
    return torch.maximum(a, b) if isinstance(a, torch.Tensor) else np.maximum(a, b)


def _minimum(a, b):
    return torch.minimum(a, b) if isinstance(a, torch.Tensor) else np.minimum(a, b)


ELEMENTWISE = {"sum": lambda a, b: a + b, "max": _maximum, "min": _minimum,
               "compensated-sum": _merge_compensated}


def merge_elementwise(rule: str, mine: Any, theirs: Any) -> Any:
    """Values (or dicts of them) combined by ``rule`` (sum, max, min, compensated-sum); None is the identity."""
    if mine is None:
        return theirs
    if theirs is None:
        return mine
    if isinstance(mine, dict):
        return {key: merge_elementwise(rule, mine.get(key), theirs.get(key)) for key in {**mine, **theirs}}
    return ELEMENTWISE[rule](mine, theirs)


def merge_rows(mine: Any, theirs: Any, rows: range) -> Any:
    if theirs is None or not len(rows):
        return mine
    out = (theirs.clone() if isinstance(theirs, torch.Tensor) else np.array(theirs, copy=True)) if mine is None \
        else mine
    out[rows.start:rows.stop] = theirs[rows.start:rows.stop]
    return out


def merge_value(rule: str, mine: Any, theirs: Any, rows: range, custom: Callable | None) -> Any:
    """``mine`` combined with ``theirs``, the state of the shard that probed sample positions ``rows``."""
    if rule in ELEMENTWISE:
        return merge_elementwise(rule, mine, theirs)
    if rule == "rows":
        return merge_rows(mine, theirs, rows)
    if rule == "custom" and custom is not None:
        if mine is None:
            return theirs
        return mine if theirs is None else custom(mine, theirs)
    raise ValueError(f"unknown merge rule {rule!r} (or no merge_ method for a custom one); rules: {RULES}")
