"""Files probekit creates beside the user's own (lock files, temporary files): never through a planted link.

Every new file is opened with ``O_CREAT | O_EXCL | O_NOFOLLOW``: whatever already sits at its name (a file, a
symbolic link to ``notes.txt``, a FIFO) makes the open fail instead of being followed, truncated or written
through. Temporary names carry the process id and random hex, so they cannot be predicted and planted.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from probekit.errors import ProbekitError

CLOEXEC = getattr(os, "O_CLOEXEC", 0)
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | CLOEXEC


def create_new(path: Path, flags: int = NEW_FILE, mode: int = 0o644) -> int:
    """A descriptor of a file this call created at ``path``; ``FileExistsError`` when anything is there."""
    return os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | CLOEXEC, mode)


@contextmanager
def temporary_beside(path: Path) -> Iterator[tuple[object, Path]]:
    """``(binary file, its path)`` of a new unpredictable file in ``path``'s folder; removed if the block fails."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    fd = create_new(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f, tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def real_store_path(path: Path) -> Path:
    """``path`` with its parent folders resolved (one name, and one lock, per real store); a store path that is
    itself a symbolic link is refused."""
    if path.is_symlink():
        raise ProbekitError(f"{path} is a symbolic link (to {os.readlink(path)}); give the store's real path")
    return path.expanduser().absolute().parent.resolve() / path.name
