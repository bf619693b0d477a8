"""How many samples a batch may hold so that the captured branch responses fit in memory.

Every branch of a layer keeps its whole response: attention heads, for instance, each keep a full ``[tokens,
width]`` map, so ViT-B/16's 144 heads hold about 87 MB per image, 64 times what its bare forward keeps. Before the
pass the run measures one sample's responses and caps the batch size so that about :data:`COPIES` copies of a
batch's responses (the capture, the stacked layer, an analysis's working copy and its float64 sums) fit in half
of the memory available now, and in :data:`CEILING` at most (a bigger batch is not faster for such models).
"""

from __future__ import annotations

import os

COPIES = 4  # copies of a batch's responses alive at once during a batch (capture, stack, analysis work)
SHARE = 0.5  # of the memory available when the run starts
CEILING = 4 * 2**30  # bytes: the most a batch's responses (all copies) may take


def available_bytes() -> int | None:
    """Memory available now (Linux ``MemAvailable``); ``None`` where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def fitted_batch_size(requested: int, response_values: int, available: int | None = None,
                      itemsize: int = 4) -> tuple[int, str]:
    """``(batch size, note)``: ``requested``, or fewer when ``response_values`` (one sample's branch responses,
    all layers) times :data:`COPIES` would not fit :data:`SHARE` of ``available`` bytes or :data:`CEILING`; the
    note says so (empty when nothing changed)."""
    available = available_bytes() if available is None else available
    per_sample = response_values * itemsize * COPIES
    if available is None or per_sample == 0:
        return requested, ""
    budget = min(available * SHARE, CEILING)
    fits = int(budget // per_sample)
    if fits >= requested:
        return requested, ""
    size = max(1, fits)
    why = (f"batch size {size} instead of {requested}: one sample's branch responses take "
           f"{response_values * itemsize / 2**20:,.0f} MB, and a batch may take {budget / 2**30:.1f} GB "
           f"({available / 2**30:.1f} GB free)")
    if fits < 1:
        why += "; even one sample may not fit (name fewer branches with --branches)"
    return size, why
