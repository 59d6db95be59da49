"""Crash tests: SIGKILL a producer that appends with fsync="always", then recover its partition."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from logq.segments import LogConfig, PartitionLog
from logq.segments.batch import Record

CHILD_SCRIPT = Path(__file__).with_name("segments_child.py")
sys.path.insert(0, str(CHILD_SCRIPT.parent))
from segments_child import value_for  # noqa: E402

CHILD_TIMEOUT_SECONDS = 30


def run_producer_until(directory: Path, segment_bytes: int, line_count: int) -> list[int]:
    """Start a producer child, read `line_count` printed offsets, then SIGKILL it."""
    child = subprocess.Popen(
        [sys.executable, str(CHILD_SCRIPT), "produce", str(directory), str(segment_bytes)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # A child that hangs without printing would block the read below forever.
    watchdog = threading.Timer(CHILD_TIMEOUT_SECONDS, child.kill)
    watchdog.start()
    printed: list[int] = []
    try:
        assert child.stdout is not None
        for line in child.stdout:
            printed.append(int(line))
            if len(printed) == line_count:
                break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        watchdog.cancel()
    assert len(printed) == line_count, child.stderr.read() if child.stderr else "no stderr"
    assert child.returncode == -signal.SIGKILL
    return printed


async def read_everything(directory: Path, segment_bytes: int) -> tuple[list[Record], int, int]:
    """Open the partition; return its records, log end offset and segment count."""
    log = await PartitionLog.open(directory, LogConfig(fsync="always", segment_bytes=segment_bytes))
    try:
        records: list[Record] = []
        offset = log.log_start_offset
        while offset < log.high_watermark:
            batch = await log.read(offset)
            records.extend(batch)
            offset = batch[-1].offset + 1
        return records, log.log_end_offset, len(log.segments)
    finally:
        await log.close()


@pytest.mark.parametrize(
    ("segment_bytes", "kill_points"),
    [(16 * 1024 * 1024, [150, 300, 450]), (2048, [97, 211, 333, 150])],
    ids=["one segment", "2 KiB segments"],
)
async def test_sigkill_keeps_every_acknowledged_append(
    tmp_path: Path, segment_bytes: int, kill_points: list[int]
) -> None:
    directory = tmp_path / "partition"
    # Each run continues from the log end offset that recovery left.
    next_offset = 0

    for line_count in kill_points:
        printed = run_producer_until(directory, segment_bytes, line_count)
        records, end_offset, segment_count = await read_everything(directory, segment_bytes)

        label = f"after the kill at line {line_count} of this run"
        assert printed == list(range(next_offset, next_offset + line_count)), label
        assert end_offset > printed[-1], label
        assert [record.offset for record in records] == list(range(end_offset)), label
        assert [record.value for record in records] == [value_for(offset) for offset in range(end_offset)], label
        if segment_bytes < 4096:
            assert segment_count > 1, label
        next_offset = end_offset
