"""Tests of the data-directory lock across real processes and within one process."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import logq
from logq.errors import DataDirLockedError, StorageError
from logq.segments import DataDirLock

CHILD_SCRIPT = Path(__file__).with_name("segments_child.py")


def start_lock_holder(directory: Path) -> subprocess.Popen[str]:
    """Start a child that takes the lock on `directory`; return once it has the lock."""
    child = subprocess.Popen(
        [sys.executable, str(CHILD_SCRIPT), "hold-lock", str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    first_line = child.stdout.readline()
    if first_line != "locked\n":
        child.kill()
        child.wait()
        pytest.fail(f"lock holder printed {first_line!r}: {child.stderr.read() if child.stderr else ''}")
    return child


def test_lock_held_by_other_process_raises(tmp_path: Path) -> None:
    holder = start_lock_holder(tmp_path)
    try:
        with pytest.raises(DataDirLockedError) as caught:
            DataDirLock(tmp_path).acquire()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()

    assert f"pid {holder.pid}" in str(caught.value)
    assert str(tmp_path) in str(caught.value)
    assert "give each process its own data directory" in str(caught.value)


def test_lock_free_after_owner_sigkill(tmp_path: Path) -> None:
    holder = start_lock_holder(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    lock = DataDirLock(tmp_path)

    lock.acquire()
    try:
        owner = (tmp_path / ".lock").read_text()
    finally:
        lock.release()

    assert holder.returncode == -signal.SIGKILL
    assert owner.startswith(f"pid {os.getpid()} ")


def test_lock_held_here_rejects_child(tmp_path: Path) -> None:
    lock = DataDirLock(tmp_path)
    lock.acquire()
    try:
        result = subprocess.run(
            [sys.executable, str(CHILD_SCRIPT), "try-lock", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        lock.release()

    assert result.returncode == 3, result.stdout + result.stderr
    assert f"pid {os.getpid()}" in result.stdout


def test_lock_released_lets_child_lock(tmp_path: Path) -> None:
    lock = DataDirLock(tmp_path)
    lock.acquire()
    lock.release()

    result = subprocess.run(
        [sys.executable, str(CHILD_SCRIPT), "try-lock", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "locked\n"


async def test_open_twice_in_one_process_raises(data_dir: Path) -> None:
    async with logq.open(data_dir):
        with pytest.raises(DataDirLockedError, match="already open in this process"):
            await logq.open(data_dir)


async def test_open_after_close_succeeds(data_dir: Path) -> None:
    first = await logq.open(data_dir)
    await first.close()

    second = await logq.open(data_dir)
    await second.close()

    assert second.closed


# -- the shared lock of a read-only check -----------------------------------------------------

STALE_OWNER = "pid 999999 on gone-host\n"


def test_shared_lock_writes_nothing(tmp_path: Path) -> None:
    lock_file = tmp_path / ".lock"
    lock_file.write_text(STALE_OWNER)
    os.utime(lock_file, ns=(10**18, 10**18))
    lock = DataDirLock(tmp_path, shared=True)

    lock.acquire()
    lock.release()

    assert lock_file.read_text() == STALE_OWNER
    assert lock_file.stat().st_mtime_ns == 10**18


def test_shared_locks_coexist(tmp_path: Path) -> None:
    (tmp_path / ".lock").touch()
    first = DataDirLock(tmp_path, shared=True)
    second = DataDirLock(tmp_path, shared=True)

    first.acquire()
    try:
        second.acquire()
        second.release()
    finally:
        first.release()


def test_shared_lock_here_rejects_child(tmp_path: Path) -> None:
    (tmp_path / ".lock").write_text(STALE_OWNER)
    lock = DataDirLock(tmp_path, shared=True)
    lock.acquire()
    try:
        result = subprocess.run(
            [sys.executable, str(CHILD_SCRIPT), "try-lock", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        lock.release()

    assert result.returncode == 3, result.stdout + result.stderr
    assert f"data directory {tmp_path} is locked for reading by another process" in result.stdout
    assert "logq check" in result.stdout
    assert "999999" not in result.stdout


def test_lock_held_by_child_rejects_shared(tmp_path: Path) -> None:
    holder = start_lock_holder(tmp_path)
    try:
        with pytest.raises(DataDirLockedError) as caught:
            DataDirLock(tmp_path, shared=True).acquire()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()

    assert f"data directory {tmp_path} is locked by pid {holder.pid} on " in str(caught.value)


def test_shared_lock_after_owner_sigkill(tmp_path: Path) -> None:
    holder = start_lock_holder(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    lock = DataDirLock(tmp_path, shared=True)

    lock.acquire()
    lock.release()

    assert (tmp_path / ".lock").read_text().startswith(f"pid {holder.pid} ")


def test_shared_lock_missing_file_creates_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lock = DataDirLock(tmp_path, shared=True)

    with caplog.at_level("INFO", logger="logq.segments.lock"):
        lock.acquire()
    lock.verify_unopened()
    lock.release()

    assert list(tmp_path.iterdir()) == []
    assert "going on without a lock" in caplog.text


def test_shared_lock_file_appears_raises(tmp_path: Path) -> None:
    lock = DataDirLock(tmp_path, shared=True)
    lock.acquire()
    (tmp_path / ".lock").touch()

    with pytest.raises(DataDirLockedError, match=f"a process opened data directory {tmp_path} while"):
        lock.verify_unopened()
    lock.release()


def test_verify_with_lock_file_passes(tmp_path: Path) -> None:
    (tmp_path / ".lock").touch()
    lock = DataDirLock(tmp_path, shared=True)
    lock.acquire()
    try:
        lock.verify_unopened()
    finally:
        lock.release()


def test_shared_lock_directory_entry_raises(tmp_path: Path) -> None:
    (tmp_path / ".lock").mkdir()

    with pytest.raises(StorageError, match="is not a regular file"):
        DataDirLock(tmp_path, shared=True).acquire()


def test_shared_lock_unreadable_file_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root reads any file despite its mode, so the open fails by replacement here.
    # tests/test_check_readonly.py runs a real unreadable lock file through the CLI.
    (tmp_path / ".lock").touch()
    real_open = os.open

    def open_denied(path: object, flags: int, *args: object) -> int:
        if Path(str(path)).name == ".lock":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", open_denied)

    with pytest.raises(StorageError, match="cannot open the lock file .* for reading") as caught:
        DataDirLock(tmp_path, shared=True).acquire()

    assert not isinstance(caught.value, DataDirLockedError)
    assert "chmod a+r" in str(caught.value)


async def test_open_while_shared_lock_held_raises(data_dir: Path) -> None:
    data_dir.mkdir()
    (data_dir / ".lock").touch()
    lock = DataDirLock(data_dir, shared=True)
    lock.acquire()
    try:
        with pytest.raises(DataDirLockedError, match="locked for reading"):
            await logq.open(data_dir)
    finally:
        lock.release()

    async with logq.open(data_dir):
        pass
