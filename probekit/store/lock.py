"""An exclusive lock per results store, so two runs never write the same ``--out`` at once.

The lock is ``flock`` on ``<store>.lock``, taken before anything is created
or deleted and held until the run ends, when the file is removed. The file is
created with ``O_EXCL | O_NOFOLLOW``; an existing one is taken over only if it
is a regular file holding a process id, so a planted link or file is refused,
never followed or truncated. The kernel
drops the lock when the process dies, SIGKILL included, so a crash leaves at
most an unlocked file that the next run takes over. (Taking the lock checks
that the file it locked is still the one at the path, so removal cannot let
two runs in.) It works on local file systems; network file systems may not
honour ``flock``.
"""

from __future__ import annotations

import fcntl
import os
import re
import stat
from pathlib import Path

from probekit.errors import ProbekitError
from probekit.store.files import CLOEXEC, create_new


LOCK_SIZE = 32  # bytes: a lock file holds the holder's process id and nothing else


def _open_lock(path: Path) -> int:
    """A read-write descriptor of the lock file: a new one, or one a dead run left (a regular file holding only a
    process id). A symbolic link, a FIFO, a hard-linked or any other file there is refused, never followed or
    truncated."""
    try:
        return create_new(path, os.O_RDWR)
    except FileExistsError:
        pass
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | CLOEXEC)
    except OSError as exc:
        raise ProbekitError(f"{path} is not a probekit lock file ({exc.strerror}); move it away") from None
    info = os.fstat(fd)
    text = os.pread(fd, LOCK_SIZE + 1, 0) if stat.S_ISREG(info.st_mode) else b"?"
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or not re.fullmatch(rb"\d{0,%d}" % LOCK_SIZE, text):
        os.close(fd)
        raise ProbekitError(f"{path} is not a probekit lock file (a lock holds only a process id); move it away")
    return fd


class StoreLock:
    """Held from construction until :meth:`release` (or process exit)."""

    def __init__(self, store: Path):
        self.path = store.with_name(store.name + ".lock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = _open_lock(self.path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, LOCK_SIZE, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise ProbekitError(f"another probekit run (pid {holder}) is writing {store}; wait for it to end "
                                    "or choose another --out") from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the previous holder removed the file between our open and our lock: take the new one
        self._fd = fd
        os.ftruncate(fd, 0)  # a lock file: ours, or a dead run's holding only its process id
        os.pwrite(fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        """Remove the lock file (if it is still ours), then drop the lock."""
        if self._fd is None:
            return
        if _same_file(self._fd, self.path):
            self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` is still the file open as ``fd`` (:func:`_open_lock` refused a link there)."""
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
