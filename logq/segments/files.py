"""Names and suffixes of the files in a partition directory."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from logq.errors import DiskFullError

LOG_SUFFIX: Final = ".log"
OFFSET_INDEX_SUFFIX: Final = ".index"
TIME_INDEX_SUFFIX: Final = ".timeindex"
TEMP_SUFFIX: Final = ".tmp"
OFFSET_DIGITS: Final = 20


def file_stem(base_offset: int) -> str:
    """Return the 20-digit, zero-padded name that a segment's files share."""
    return f"{base_offset:0{OFFSET_DIGITS}d}"


def log_path(directory: Path, base_offset: int) -> Path:
    """Path of the segment file whose first offset is `base_offset`."""
    return directory / (file_stem(base_offset) + LOG_SUFFIX)


def offset_index_path(directory: Path, base_offset: int) -> Path:
    """Path of the offset index of the segment at `base_offset`."""
    return directory / (file_stem(base_offset) + OFFSET_INDEX_SUFFIX)


def time_index_path(directory: Path, base_offset: int) -> Path:
    """Path of the time index of the segment at `base_offset`."""
    return directory / (file_stem(base_offset) + TIME_INDEX_SUFFIX)


def base_offset_of(path: Path) -> int | None:
    """Return the base offset a segment file name encodes, or None for other files."""
    stem = path.name[: -len(LOG_SUFFIX)] if path.name.endswith(LOG_SUFFIX) else ""
    if len(stem) != OFFSET_DIGITS or not stem.isdigit():
        return None
    return int(stem)


def fsync_directory(directory: Path) -> None:
    """Flush a directory entry change (create, rename, delete) to disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def convert_disk_full(path: Path, action: str) -> Iterator[None]:
    """Raise DiskFullError for an OSError with errno ENOSPC inside the block.

    The message names `path`, `action` (what the block was doing) and the
    fix: free disk space and retry. Other exceptions pass unchanged.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFullError(
                f"{path}: no space left on the device while {action}; free disk space and retry"
            ) from exc
        raise


def write_file_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves the old or the new file.

    Writes a temporary file beside it, fsyncs it, renames it over `path` and
    fsyncs the directory. A failed write removes the temporary file and
    leaves `path` as it was. ENOSPC raises DiskFullError, other failures
    raise OSError.
    """
    temp = path.with_name(path.name + TEMP_SUFFIX)
    with convert_disk_full(path, "replacing the file"):
        try:
            with open(temp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
        except OSError:
            temp.unlink(missing_ok=True)
            raise
        fsync_directory(path.parent)
