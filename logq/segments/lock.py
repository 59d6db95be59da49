"""The data-directory lock: one process owns a data directory at a time."""

from __future__ import annotations

import fcntl
import logging
import os
import socket
from pathlib import Path

from logq.errors import DataDirLockedError, StorageError

logger = logging.getLogger(__name__)

LOCK_FILE_NAME = ".lock"


class DataDirLock:
    """An exclusive `flock` on `<data dir>/.lock`, which stores the owner's pid and host.

    The kernel releases the lock when the owner exits, even after SIGKILL, so
    a stale lock file never blocks a restart.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_FILE_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise DataDirLockedError naming the process that holds it."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot create the lock file {self.path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown process"
            os.close(fd)
            raise DataDirLockedError(
                f"data directory {self.path.parent} is locked by {owner}; one process owns a "
                "data directory at a time, so stop that process or share the data through a server"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"cannot lock {self.path}: {exc}") from exc
        owner = f"pid {os.getpid()} on {socket.gethostname()}\n".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, owner, 0)
        self._fd = fd
        logger.debug("locked %s", self.path)

    def release(self) -> None:
        """Release the lock; safe to call when it is not held."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
