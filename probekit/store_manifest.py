"""Per-node file manifests, so a damaged node is named and set aside instead of read as fill values.

When a node is written, the size of every file in it is recorded in the
root attr ``manifests`` (``{node: {relative path: bytes}}``). Opening a local
store compares them with the files on disk: a missing, added-to-nothing or
resized file marks the node damaged. zarr itself would return its fill
value (NaN or 0) for a missing chunk and never complain.
"""

from __future__ import annotations

from pathlib import Path

MAX_LISTED = 3  # problems named per node


def manifest(folder: Path) -> dict[str, int]:
    """``{path relative to folder: size in bytes}`` of every file under ``folder``."""
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def damage(folder: Path, expected: dict[str, int]) -> str | None:
    """What differs between the files under ``folder`` and ``expected``; None when nothing does."""
    if not folder.is_dir():
        return "its folder is missing"
    found = manifest(folder)
    missing = [p for p in expected if p not in found]
    resized = [p for p, size in expected.items() if p in found and found[p] != size]
    problems = [f"{len(missing)} file(s) missing ({', '.join(missing[:MAX_LISTED])})"] if missing else []
    if resized:
        problems.append(f"{len(resized)} file(s) changed size ({', '.join(resized[:MAX_LISTED])})")
    return "; ".join(problems) or None
