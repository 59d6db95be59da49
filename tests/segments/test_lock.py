"""Tests of the data-directory lock across real processes and within one process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import logq
from logq.errors import DataDirLockedError
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
    assert "server" in str(caught.value)


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
        with pytest.raises(DataDirLockedError, match=f"pid {os.getpid()}"):
            await logq.open(data_dir)


async def test_open_after_close_succeeds(data_dir: Path) -> None:
    first = await logq.open(data_dir)
    await first.close()

    second = await logq.open(data_dir)
    await second.close()

    assert second.closed
