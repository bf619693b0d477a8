"""The batch size is capped so that the captured branch responses fit in memory, and the run says so."""

from __future__ import annotations

import ctypes

import pytest

from probekit.run.memory_fit import CEILING, COPIES, SHARE, fitted_batch_size


def test_a_batch_that_fits_is_kept():
    assert fitted_batch_size(64, 1000, available=10 * 2**30) == (64, "")


def test_a_batch_that_does_not_fit_is_cut_with_a_note():
    per_sample = 87 * 2**20 // 4  # ViT-B/16's 144 heads: about 87 MB of responses per image
    size, note = fitted_batch_size(64, per_sample, available=6 * 2**30)
    assert size == int(6 * 2**30 * SHARE // (per_sample * 4 * COPIES)) and 1 <= size < 64
    assert note.startswith(f"batch size {size} instead of 64") and "87 MB" in note


def test_even_one_sample_too_large_is_said():
    size, note = fitted_batch_size(8, 2**30, available=2**30)
    assert size == 1 and "even one sample may not fit" in note


def test_plenty_of_memory_still_stops_at_the_ceiling():
    per_sample = 87 * 2**20 // 4
    size, note = fitted_batch_size(64, per_sample, available=200 * 2**30)
    assert size == CEILING // (per_sample * 4 * COPIES) and "a batch may take 4.0 GB" in note


class MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2``."""

    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def test_a_pass_serves_large_buffers_from_the_heap_and_gives_glibcs_defaults_back():
    """Inside reused_memory a 64 MB tensor is not a fresh mmap (glibc's hblkhd does not grow), so a freed one is
    reused by the next batch; after it, such a tensor is mmapped again."""
    import torch

    from probekit.run.allocator import _glibc, reused_memory

    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        pytest.skip("not glibc 2.33 or later: reused_memory does nothing here")
    libc.mallinfo2.restype = MallInfo2

    def mapped_while_alive() -> int:
        before = libc.mallinfo2().hblkhd
        tensor = torch.empty(64 << 20, dtype=torch.uint8)
        grown = libc.mallinfo2().hblkhd - before
        del tensor
        return grown

    with reused_memory() as kept:
        assert kept
        assert mapped_while_alive() == 0
    assert mapped_while_alive() >= 64 << 20
