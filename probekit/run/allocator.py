"""Freed memory kept for reuse during a pass, so each batch's large response buffers do not page-fault anew.

glibc serves an allocation over its mmap threshold (at most 32 MB by default) with fresh pages from the kernel
and returns them on free; the next batch's buffer of the same size then faults every page in again (zeroed by the
kernel). Head contributions are tens of MB per layer and batch, and this churn cost a quarter of a ViT-B/16
forward, and slowed the model's own large buffers too. Inside :func:`reused_memory`, allocations up to 1 GiB come
from the heap and freed memory stays there for the next batch; on exit glibc's defaults come back and the kept
memory is returned (``malloc_trim``). Elsewhere than glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
DEFAULT = 128 * 1024  # glibc's default for both thresholds
KEEP_UP_TO = 1 << 30  # bytes: allocations served from the heap, and reused, during the pass
NEVER_TRIM = (1 << 31) - 1


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


@contextmanager
def reused_memory() -> Iterator[bool]:
    """Within the block, glibc keeps freed memory for reuse (see the module docstring); yields whether it does."""
    libc = _glibc()
    if libc is None or not (libc.mallopt(M_MMAP_THRESHOLD, KEEP_UP_TO) and libc.mallopt(M_TRIM_THRESHOLD,
                                                                                            NEVER_TRIM)):
        yield False
        return
    try:
        yield True
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, DEFAULT)
        libc.mallopt(M_TRIM_THRESHOLD, DEFAULT)
        libc.malloc_trim(0)
