"""Per-sample results streamed to disk, so memory does not grow with the sample count.

An analysis asks its context for a :class:`SampleArray` of shape ``[N, *tail]``
and writes each batch's rows to it. Rows arrive in order; they are buffered
one zarr chunk at a time and written when the chunk is full, straight into
the analysis's staging node (see :class:`probekit.store.results.StoreWriter`). The
array then appears in the node as a variable like any other.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import zarr
import zarr.errors

CHUNK_BYTES = 4 << 20  # about 4 MiB per chunk


def chunk_rows(shape: tuple[int, ...], itemsize: int, align: int | None) -> int:
    """Rows per chunk: about :data:`CHUNK_BYTES`; with ``align``, a power of two that divides it (so every
    shard of a distributed run starts on a chunk boundary and owns whole chunks)."""
    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * itemsize)
    rows = max(1, min(shape[0], CHUNK_BYTES // row_bytes))
    if align is None:
        return rows
    return math.gcd(2 ** int(math.log2(rows)), align)


def _create_or_open(root: zarr.Group, name: str, settings: dict, tries: int = 50) -> zarr.Array:
    """The array ``name`` of ``root``, made with ``settings`` unless another process made it first (the
    processes of a distributed run may reach their first batch at the same moment)."""
    from probekit.store.results import checksummed_compressors

    try:
        return root.create_array(name, compressors=checksummed_compressors(), **settings)
    except zarr.errors.ContainsArrayError:
        pass
    for _ in range(tries):  # its metadata may still be being written
        try:
            return root[name]
        except (KeyError, ValueError):
            time.sleep(0.1)
    return root[name]


class SampleArray:
    """A ``[N, *tail]`` array filled batch by batch, in sample order, over the positions ``rows``.

    ``group`` is the staging zarr group of the node, or ``None`` to keep the
    array in memory (when no store is being written, e.g. in benchmarks).
    In a distributed run each process writes the rows of its own shard into
    the same zarr array (created by the first process, opened by the others).
    """

    def __init__(self, group: Path | None, name: str, dims: tuple[str, ...], shape: tuple[int, ...],
                 dtype, attrs: dict, rows: range | None = None, align: int | None = None, start: int = 0):
        self.name, self.dims, self.shape, self.attrs = name, dims, shape, attrs
        self.dtype = np.dtype(dtype)
        self.rows = rows if rows is not None else range(shape[0])
        self.chunk_rows = chunk_rows(shape, self.dtype.itemsize, align)
        self._next = self.rows.start
        self._buffer = np.zeros((self.chunk_rows, *shape[1:]), dtype=self.dtype)
        if group is None:
            self._array = np.zeros(shape, dtype=self.dtype)
        else:
            self._array = _create_or_open(zarr.open_group(str(group), mode="a", zarr_format=3), name, dict(
                shape=shape, dtype=self.dtype, chunks=(self.chunk_rows, *shape[1:]), dimension_names=dims,
                attributes=attrs, fill_value=0))
        self.in_memory = group is None
        if start > self._next:  # a resumed run: rows before ``start`` are on disk; reload the open chunk
            self._next = start
            chunk_start = start // self.chunk_rows * self.chunk_rows
            self._buffer[: start - chunk_start] = self._array[chunk_start:start]

    def write(self, start: int, rows: np.ndarray) -> None:
        """Write ``rows`` for samples ``start .. start + len(rows) - 1`` (must follow the previous write)."""
        if start != self._next or start + len(rows) > self.rows.stop:
            raise ValueError(f"{self.name}: samples must arrive in order within {self.rows} (expected "
                             f"{self._next}, got {start}..{start + len(rows) - 1})")
        done = 0
        while done < len(rows):
            offset = self._next % self.chunk_rows
            take = min(self.chunk_rows - offset, len(rows) - done)
            self._buffer[offset:offset + take] = rows[done:done + take]
            self._next += take
            done += take
            if self._next % self.chunk_rows == 0 or self._next == self.rows.stop:
                self._flush()

    def _flush(self) -> None:
        """Write the open chunk's rows of this process's shard (never another shard's rows of the same chunk)."""
        chunk_start = (self._next - 1) // self.chunk_rows * self.chunk_rows
        first = max(chunk_start, self.rows.start)
        self._array[first:self._next] = self._buffer[first - chunk_start: self._next - chunk_start]

    def checkpoint(self) -> None:
        """Write the rows still buffered (a partial chunk), so everything before the next row is on disk."""
        if self._next % self.chunk_rows and not self.in_memory:
            self._flush()

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start .. stop - 1``, from memory or from the store (after :meth:`checkpoint`, or at finalize)."""
        return np.asarray(self._array[start:stop])

    def values(self) -> np.ndarray | None:
        """The whole array when it lives in memory; ``None`` when it is on disk."""
        return self._array if self.in_memory else None
