"""An exclusive lock on an output folder, so two runs never write into one folder at once.

The lock is ``fcntl.flock`` on a file in the folder, which the kernel releases when the holding
process dies, however it dies: a lock file left behind by a killed run is stale and simply taken
over. The file records who holds it (pid, host, start time) for the refusal message.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from nucleisam.errors import NucleisamError

LOCK_NAME = ".nucleisam.lock"


class FolderLock:
    """Hold the lock on ``directory`` inside a ``with`` block; a second holder is refused at once."""

    def __init__(self, directory: str | os.PathLike[str], *, option: str = "--out") -> None:
        self.path = Path(directory) / LOCK_NAME
        self.option = option
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                raise NucleisamError(
                    f"output folder {self.path.parent} ({self.option}) is in use by another nucleisam run "
                    f"({holder}); wait for it to finish or choose another folder."
                ) from None
            # A run finishing between our open and flock unlinks the file we hold: lock the new one.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        with contextlib.suppress(OSError):  # who holds it is a courtesy; a full disk must not stop here
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)  # releases the flock
        self._fd = None
