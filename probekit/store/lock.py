"""An exclusive lock per results store, so two runs never write the same ``--out`` at once.

The lock is ``flock`` on ``<store>.lock``, taken before anything is created
or deleted and held until the run ends, when the file is removed. The kernel
drops the lock when the process dies, SIGKILL included, so a crash leaves at
most an unlocked file that the next run takes over. (Taking the lock checks
that the file it locked is still the one at the path, so removal cannot let
two runs in.) It works on local file systems; network file systems may not
honour ``flock``.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from probekit.errors import ProbekitError


class StoreLock:
    """Held from construction until :meth:`release` (or process exit)."""

    def __init__(self, store: Path):
        self.path = store.with_name(store.name + ".lock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise ProbekitError(f"another probekit run (pid {holder}) is writing {store}; wait for it to end "
                                    "or choose another --out") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the previous holder removed the file between our open and our lock: take the new one
        self._fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        """Remove the lock file, then drop the lock."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None
