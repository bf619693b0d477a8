"""How many CPU threads torch uses for a run: the cores left free by other work, unless told.

torch starts one thread per core whatever else runs; on a busy machine its threads then wait on each other, and
a run that takes 17 s on one free core takes minutes. The default counts the cores this process may use, less
the machine's current load (its 1-minute load average), and never more than torch's own default.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

from probekit.errors import ProbekitError


def usable_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # (not on Linux)
        return os.cpu_count() or 1


def default_threads() -> tuple[int, str]:
    """``(threads, why)``: torch's default, less the cores other work keeps busy."""
    ceiling = min(torch.get_num_threads(), usable_cores())
    try:
        busy = int(os.getloadavg()[0])
    except (AttributeError, OSError):
        busy = 0
    threads = max(1, min(ceiling, usable_cores() - busy))
    if threads < ceiling:
        return threads, f"{threads} of {ceiling} (the others are busy: load average {os.getloadavg()[0]:.1f})"
    return threads, f"{threads}"


@contextmanager
def torch_threads(threads: int | None):
    """Run the block with ``threads`` torch threads (``None``: :func:`default_threads`); yields the note."""
    if threads is not None and threads < 1:
        raise ProbekitError(f"threads must be at least 1, not {threads}")
    chosen, why = (threads, f"{threads} (asked)") if threads is not None else default_threads()
    before = torch.get_num_threads()
    torch.set_num_threads(chosen)
    try:
        yield f"threads: {why}"
    finally:
        torch.set_num_threads(before)
