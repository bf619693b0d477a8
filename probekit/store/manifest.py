"""Per-node file manifests, so a damaged node is named and set aside instead of read as wrong numbers.

When a node is written, the size and CRC-32 of every file in it are recorded
in the root attr ``manifests`` (``{node: {relative path: [bytes, crc32]}}``).
Opening a local store compares them with the files on disk: a missing,
resized or changed file (one flipped bit is enough) marks the node damaged.
zarr itself would return its fill value for a missing chunk, and decode a
changed one into different numbers. (Stores written before checksums were
recorded hold sizes only, and are checked by size.)
"""

from __future__ import annotations

import zlib
from pathlib import Path

MAX_LISTED = 3  # problems named per node
BLOCK = 1 << 20


def file_crc32(path: Path) -> int:
    """CRC-32 of a file's bytes."""
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            crc = zlib.crc32(block, crc)
    return crc


def manifest(folder: Path) -> dict[str, list[int]]:
    """``{path relative to folder: [size in bytes, crc32]}`` of every file under ``folder``."""
    return {p.relative_to(folder).as_posix(): [p.stat().st_size, file_crc32(p)]
            for p in sorted(folder.rglob("*")) if p.is_file()}


def damage(folder: Path, expected: dict[str, list[int] | int]) -> str | None:
    """What differs between the files under ``folder`` and ``expected``; None when nothing does."""
    if not folder.is_dir():
        return "its folder is missing"
    found = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    missing = [p for p in expected if p not in found]
    resized, changed = [], []
    for name, record in expected.items():
        if name not in found:
            continue
        size, crc = (record, None) if isinstance(record, int) else record
        if found[name].stat().st_size != size:
            resized.append(name)
        elif crc is not None and file_crc32(found[name]) != crc:
            changed.append(name)
    problems = [f"{len(missing)} file(s) missing ({', '.join(missing[:MAX_LISTED])})"] if missing else []
    if resized:
        problems.append(f"{len(resized)} file(s) changed size ({', '.join(resized[:MAX_LISTED])})")
    if changed:
        problems.append(f"{len(changed)} file(s) fail their checksum ({', '.join(changed[:MAX_LISTED])})")
    return "; ".join(problems) or None
