"""The data-directory lock: one process owns a data directory at a time."""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import stat
from pathlib import Path

from logq.errors import DataDirLockedError, StorageError

logger = logging.getLogger(__name__)

LOCK_FILE_NAME = ".lock"


class DataDirLock:
    """A `flock` on `<data dir>/.lock`: exclusive for a process that may write, shared for a read-only check.

    The exclusive holder stores its pid and host in the file and clears them on
    release. A shared holder opens the file read-only and writes nothing, so a
    read-only directory can be checked. Shared holders block an exclusive one
    and the other way round, but several shared holders may run at once. The
    kernel releases the lock when the holder exits, even after SIGKILL, so a
    stale lock file never blocks a restart.
    """

    def __init__(self, directory: Path, *, shared: bool = False) -> None:
        self.path = directory / LOCK_FILE_NAME
        self.shared = shared
        self._fd: int | None = None
        # Set when a shared acquire found no lock file and went on without a lock.
        self._file_was_missing = False

    def acquire(self) -> None:
        """Take the lock, or raise DataDirLockedError naming the process that holds it.

        The exclusive lock creates the lock file when it is missing. The shared
        lock never creates it, because without the file no logq process can
        have the directory open. The shared lock then holds nothing. Raises
        StorageError when the lock file cannot be created, opened or locked.
        """
        if self.shared:
            self._acquire_shared()
        else:
            self._acquire_exclusive()

    def _acquire_exclusive(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot create the lock file {self.path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            message = self._locked_message(fd)
            os.close(fd)
            raise DataDirLockedError(message) from None
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"cannot lock {self.path}: {exc}") from exc
        owner = f"pid {os.getpid()} on {socket.gethostname()}\n".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, owner, 0)
        self._fd = fd
        logger.debug("locked %s", self.path)

    def _acquire_shared(self) -> None:
        try:
            # O_NONBLOCK only keeps the open from hanging when the path is a FIFO.
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            # NOTE: a writer whose lock file someone deleted while it ran goes unnoticed here.
            self._file_was_missing = True
            logger.info(
                "lock file %s does not exist, so no logq process has the directory open; "
                "going on without a lock", self.path,
            )
            return
        except OSError as exc:
            raise StorageError(
                f"cannot open the lock file {self.path} for reading: {exc}; make it readable "
                f"(chmod a+r {self.path}) or run as the user that owns the data directory"
            ) from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StorageError(f"lock file {self.path} is not a regular file, so logq did not write it; move it aside")
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = self._owner_line(fd)
            os.close(fd)
            raise DataDirLockedError(
                f"data directory {self.path.parent} is locked by {owner}; stop that process and check again"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"cannot lock {self.path}: {exc}") from exc
        self._fd = fd
        logger.debug("locked %s for reading", self.path)

    def _locked_message(self, fd: int) -> str:
        """Describe who blocks an exclusive lock on `fd`: a writer names itself, shared holders do not."""
        try:
            # A shared lock fails only while an exclusive holder exists. When it
            # succeeds, only shared holders block us. They write no owner line, so
            # a line in the file is stale then, left by a writer that was killed.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            owner = self._owner_line(fd)
            if owner.startswith(f"pid {os.getpid()} "):
                return (
                    f"data directory {self.path.parent} is already open in this process; one Log owns a data "
                    "directory at a time, so use the open Log or close it first"
                )
            return (
                f"data directory {self.path.parent} is locked by {owner}; one process owns a data "
                "directory at a time, so stop that process, or give each process its own data directory"
            )
        fcntl.flock(fd, fcntl.LOCK_UN)
        return (
            f"data directory {self.path.parent} is locked for reading by another process, probably a "
            "running `logq check`; wait for it to finish and retry"
        )

    @staticmethod
    def _owner_line(fd: int) -> str:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown process"

    def verify_unopened(self) -> None:
        """Raise DataDirLockedError when a shared acquire found no lock file and the file exists now.

        A lock file that appeared means a logq process opened the directory
        while the caller read it without a lock, so what it read may be
        inconsistent. Does nothing in every other case.
        """
        if self._file_was_missing and os.path.lexists(self.path):
            raise DataDirLockedError(
                f"a process opened data directory {self.path.parent} while it was read without a lock, "
                "so the result may be inconsistent; stop that process and check again"
            )

    def release(self) -> None:
        """Release the lock and clear the owner line of an exclusive one. Safe to call when it is not held."""
        if self._fd is not None:
            if not self.shared:
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        self._file_was_missing = False
