"""Tests of a full disk: every write path raises DiskFullError, assigns no offset and recovers once space is freed.

Most tests inject ENOSPC by replacing an `os` function with one that fails for
the files a test names, so they run everywhere. One test fills a real tmpfs,
which needs root to mount and is skipped when the mount fails.
"""

from __future__ import annotations

import asyncio
import builtins
import errno
import io
import logging
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import logq
from logq import topics
from logq.consumers import Group
from logq.consumers.journal import GroupJournal
from logq.consumers.priority_index import PriorityIndex
from logq.errors import DiskFullError
from logq.segments.batch import RecordInput, iter_batches
from logq.segments.files import file_stem
from logq.segments.partition_log import INLINE_WRITE_BYTES, LogConfig, PartitionLog

if TYPE_CHECKING:
    from conftest import FakeClock

NEVER = LogConfig(fsync="never")
ALWAYS = LogConfig(fsync="always")
ROLL_EVERY_BATCH = LogConfig(fsync="never", segment_bytes=1)
PROC_FD = Path("/proc/self/fd")


def value_for(offset: int) -> bytes:
    return f"value-{offset}".encode() * (1 + offset % 4)


def records_from(offset: int, count: int, priority: int = 0) -> list[RecordInput]:
    return [RecordInput(value=value_for(offset + number), priority=priority) for number in range(count)]


def path_of(fd: int) -> str:
    """Return the path the descriptor `fd` refers to (Linux /proc), or "" when it is unknown."""
    try:
        return os.readlink(PROC_FD / str(fd))
    except OSError:
        return ""


class DiskFull:
    """ENOSPC for the files whose path ends with `suffix`, raised by the functions `wrap` returns.

    `failures` counts the errors raised. Set `full` to False to free the disk.
    """

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix
        self.full = True
        self.failures = 0

    def wrap(self, real: Callable[..., Any], *, by_fd: bool) -> Callable[..., Any]:
        """Return `real` made to fail for matching files; `by_fd` means its first argument is a descriptor."""

        def call(target: Any, *args: Any, **kwargs: Any) -> Any:
            path = path_of(target) if by_fd and isinstance(target, int) else str(os.fspath(target))
            if self.full and path.endswith(self.suffix):
                self.failures += 1
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
            return real(target, *args, **kwargs)

        return call


@pytest.fixture
def fill_disk(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, str], DiskFull]:
    """Make `os.<function>` raise ENOSPC for files whose path ends with a suffix, until the test frees the disk.

    For "open", the built-in `open` and `io.open` (which `Path.write_bytes` uses) fail too.
    """
    if not PROC_FD.is_dir():
        pytest.skip("finding the file of a descriptor needs /proc/self/fd (Linux)")

    def install(function: str, suffix: str) -> DiskFull:
        disk = DiskFull(suffix)
        monkeypatch.setattr(os, function, disk.wrap(getattr(os, function), by_fd=function != "open"))
        if function == "open":
            monkeypatch.setattr(io, "open", disk.wrap(io.open, by_fd=False))
            monkeypatch.setattr(builtins, "open", disk.wrap(builtins.open, by_fd=False))
        return disk

    return install


@pytest.fixture
async def open_log(tmp_path: Path) -> AsyncIterator[Callable[..., object]]:
    """Open partition logs at tmp_path/partition and close every one of them at the end."""
    opened: list[PartitionLog] = []

    async def open_with(config: LogConfig = NEVER) -> PartitionLog:
        log = await PartitionLog.open(tmp_path / "partition", config)
        opened.append(log)
        return log

    yield open_with
    for log in opened:
        await log.close()


async def read_values(log: PartitionLog) -> list[bytes]:
    """Read every record below the high watermark and return the values, checking offsets are dense."""
    values: list[bytes] = []
    offset = log.log_start_offset
    while offset < log.high_watermark:
        records = await log.read(offset)
        assert records, f"empty read at offset {offset}"
        assert [record.offset for record in records] == list(range(offset, offset + len(records)))
        values.extend(record.value for record in records)
        offset = records[-1].offset + 1
    return values


def expected_values(end_offset: int) -> list[bytes]:
    return [value_for(offset) for offset in range(end_offset)]


def stored_files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()}


async def check_reopens_cleanly(directory: Path, config: LogConfig, end_offset: int,
                                caplog: pytest.LogCaptureFixture) -> None:
    """Reopen the partition and check that it contains offsets 0..end_offset-1 with nothing truncated or rebuilt."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="logq.segments"):
        log = await PartitionLog.open(directory, config)
    try:
        assert log.log_end_offset == end_offset
        assert await read_values(log) == expected_values(end_offset)
    finally:
        await log.close()
    assert "truncated" not in caplog.text
    assert "rebuilding" not in caplog.text


# -- the segment write ---------------------------------------------------------------------------


async def test_large_batch_write_full(open_log, tmp_path: Path, fill_disk, caplog: pytest.LogCaptureFixture) -> None:
    # Batches above INLINE_WRITE_BYTES are written in a worker thread, a path apart from the inline write.
    log = await open_log()
    await log.append(records_from(0, 2))
    before = stored_files(tmp_path / "partition")
    disk = fill_disk("pwrite", ".log")
    large = [RecordInput(value=b"x" * (INLINE_WRITE_BYTES + 1))]

    with pytest.raises(DiskFullError, match="free disk space and retry") as caught:
        await log.append(large)

    assert "offsets 2..2" in str(caught.value)
    assert disk.failures == 1
    assert log.log_end_offset == 2
    assert stored_files(tmp_path / "partition") == before
    disk.full = False
    assert await log.append(records_from(2, 1)) == (2, 3)
    await log.close()
    await check_reopens_cleanly(tmp_path / "partition", NEVER, 3, caplog)


# -- a roll --------------------------------------------------------------------------------------

ROLL_FAILURES = [
    pytest.param("open", "00000000000000000002.log", id="new segment file"),
    pytest.param("fsync", "partition", id="directory fsync"),
    pytest.param("fsync", "00000000000000000000.log", id="fsync of the closed segment"),
    pytest.param("write", "00000000000000000000.timeindex", id="time index of the closed segment"),
]


@pytest.mark.parametrize(("function", "suffix"), ROLL_FAILURES)
async def test_roll_full(open_log, tmp_path: Path, fill_disk, caplog: pytest.LogCaptureFixture,
                         function: str, suffix: str) -> None:
    log = await open_log(ROLL_EVERY_BATCH)
    await log.append(records_from(0, 2))
    directory = tmp_path / "partition"
    disk = fill_disk(function, suffix)

    # Every batch after the first rolls, so this append rolls before it writes.
    with pytest.raises(DiskFullError, match="free disk space and retry") as caught:
        await log.append(records_from(2, 3))

    assert disk.failures >= 1
    assert str(directory) in str(caught.value)
    assert log.log_end_offset == 2
    assert [segment.base_offset for segment in log.segments] == [0]
    # The roll removed what it created, so no empty segment contradicts the old one.
    assert sorted(path.name for path in directory.glob("*.log")) == [file_stem(0) + ".log"]
    assert list(directory.glob(file_stem(2) + ".*")) == []
    assert await read_values(log) == expected_values(2)

    disk.full = False
    assert await log.append(records_from(2, 3)) == (2, 5)
    assert await log.append(records_from(5, 1)) == (5, 6)
    assert [segment.base_offset for segment in log.segments] == [0, 2, 5]
    assert await read_values(log) == expected_values(6)
    await log.close()
    await check_reopens_cleanly(directory, ROLL_EVERY_BATCH, 6, caplog)


async def test_failed_roll_then_small_append(open_log, tmp_path: Path, fill_disk,
                                             caplog: pytest.LogCaptureFixture) -> None:
    # A batch too large for the active segment fails to roll. A smaller batch that
    # fits then goes to the active segment, and no empty segment file claims its offsets.
    config = LogConfig(fsync="never", segment_bytes=400)
    log = await open_log(config)
    await log.append(records_from(0, 2))
    disk = fill_disk("open", file_stem(2) + ".log")

    with pytest.raises(DiskFullError):
        await log.append([RecordInput(value=b"y" * 500)])
    disk.full = False
    assert await log.append(records_from(2, 1)) == (2, 3)
    await log.close()

    await check_reopens_cleanly(tmp_path / "partition", config, 3, caplog)


# -- an fsync --------------------------------------------------------------------------------------


async def test_fsync_full(open_log, tmp_path: Path, fill_disk, caplog: pytest.LogCaptureFixture) -> None:
    log = await open_log(ALWAYS)
    await log.append(records_from(0, 2))
    disk = fill_disk("fsync", ".log")

    with pytest.raises(DiskFullError, match="syncing the segment to disk; free disk space and retry"):
        await log.append(records_from(2, 2))

    # The batch was written before the fsync failed, so it keeps its offsets,
    # but readers do not see it until an fsync succeeds.
    assert log.log_end_offset == 4
    assert log.high_watermark == 2
    assert await read_values(log) == expected_values(2)
    with pytest.raises(DiskFullError):
        await log.flush()

    disk.full = False
    assert await log.append(records_from(4, 1)) == (4, 5)
    assert log.high_watermark == 5
    assert await read_values(log) == expected_values(5)
    await log.close()
    await check_reopens_cleanly(tmp_path / "partition", ALWAYS, 5, caplog)


async def test_interval_fsync_full_logged_and_retried(open_log, fill_disk,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    log = await open_log(LogConfig(fsync="interval", fsync_interval_ms=5))
    disk = fill_disk("fsync", ".log")

    with caplog.at_level(logging.ERROR, logger="logq.segments.partition_log"):
        await log.append(records_from(0, 1))
        for _ in range(200):
            if disk.failures >= 2:
                break
            await asyncio.sleep(0.005)

    # The periodic flush logs each failure and tries again instead of stopping.
    assert disk.failures >= 2
    assert "periodic fsync of partition" in caplog.text
    assert "no space left" in caplog.text
    disk.full = False
    await log.flush()
    assert log.high_watermark == 1


# -- an index file write ----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".index", ".timeindex"])
async def test_index_write_full(open_log, tmp_path: Path, fill_disk, caplog: pytest.LogCaptureFixture,
                                clock: FakeClock, suffix: str) -> None:
    log = await open_log(ALWAYS)
    await log.append(records_from(0, 2))
    clock.now_ms += 10  # a time index entry needs a later timestamp
    index_path = tmp_path / "partition" / (file_stem(0) + suffix)
    index_before = index_path.read_bytes()
    disk = fill_disk("write", suffix)
    log.active_segment._bytes_since_index_entry = log.config.index_interval_bytes  # the next batch gets an entry

    with pytest.raises(DiskFullError, match="writing index entries; free disk space and retry") as caught:
        await log.append(records_from(2, 1))

    assert index_path.name in str(caught.value)
    assert disk.failures == 1
    assert index_path.read_bytes() == index_before
    assert log.high_watermark == 2

    disk.full = False
    await log.flush()
    assert log.high_watermark == 3
    assert len(index_path.read_bytes()) > len(index_before)
    await log.close()
    await check_reopens_cleanly(tmp_path / "partition", ALWAYS, 3, caplog)


async def test_partial_index_write_cut_back(open_log, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    if not PROC_FD.is_dir():
        pytest.skip("finding the file of a descriptor needs /proc/self/fd (Linux)")
    log = await open_log(ALWAYS)
    await log.append(records_from(0, 2))
    index_path = tmp_path / "partition" / (file_stem(0) + ".index")
    index_before = index_path.read_bytes()
    real_write = os.write
    state = {"full": True}

    def write(fd: int, data: bytes) -> int:
        # Three bytes of the entry reach the file, then the disk is full.
        if state["full"] and path_of(fd).endswith(".index"):
            if len(data) > 3:
                return real_write(fd, bytes(data[:3]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    log.active_segment._bytes_since_index_entry = log.config.index_interval_bytes

    with pytest.raises(DiskFullError):
        await log.append(records_from(2, 1))

    assert index_path.read_bytes() == index_before
    state["full"] = False
    await log.flush()
    await log.close()
    assert len(index_path.read_bytes()) == len(index_before) + 8
    await check_reopens_cleanly(tmp_path / "partition", ALWAYS, 3, caplog)


async def test_index_rewrite_on_open_full(tmp_path: Path, fill_disk) -> None:
    log = await PartitionLog.open(tmp_path, NEVER)
    await log.append(records_from(0, 2))
    await log.close()
    fill_disk("open", ".index")

    # Opening rewrites the active segment's indexes.
    with pytest.raises(DiskFullError, match="rewriting the offset index; free disk space and retry"):
        await PartitionLog.open(tmp_path, NEVER)


# -- the group journal ---------------------------------------------------------------------------------


async def test_journal_append_full(tmp_path: Path, fill_disk) -> None:
    journal, _, _ = await GroupJournal.open(tmp_path / "group")
    events = [{"event": "ack", "topic": "t", "partition": 0, "ranges": [[0, 1]]}]
    await journal.append(events)
    disk = fill_disk("pwrite", ".log")

    with pytest.raises(DiskFullError, match="free disk space and retry"):
        await journal.append([{"event": "ack", "topic": "t", "partition": 0, "ranges": [[1, 2]]}])

    assert disk.failures == 1
    assert journal.log.log_end_offset == 1
    assert journal.events_since_snapshot == 1
    disk.full = False
    await journal.append([{"event": "ack", "topic": "t", "partition": 0, "ranges": [[2, 3]]}])
    await journal.close()

    reopened, snapshot, replayed = await GroupJournal.open(tmp_path / "group")
    await reopened.close()
    assert snapshot is None
    assert [event["ranges"] for event in replayed] == [[[0, 1]], [[2, 3]]]


async def test_journal_snapshot_full(tmp_path: Path, fill_disk) -> None:
    journal, _, _ = await GroupJournal.open(tmp_path / "group")
    await journal.append([{"event": "reset", "topic": "t", "partition": 0, "offset": 0}])
    disk = fill_disk("fsync", "snapshot.json.tmp")

    with pytest.raises(DiskFullError, match="snapshot.json: no space left"):
        await journal.snapshot({"partitions": [], "redriven": []})

    assert disk.failures == 1
    assert sorted(path.name for path in (tmp_path / "group").iterdir()) == ["journal"]
    disk.full = False
    await journal.close()
    reopened, snapshot, replayed = await GroupJournal.open(tmp_path / "group")
    await reopened.close()
    assert snapshot is None
    assert [event["event"] for event in replayed] == ["reset"]


# -- a group whose journal is full -----------------------------------------------------------------------

# The first segment of group g's journal; topic segments have the same name in another directory.
JOURNAL_SEGMENT = "groups/g/journal/00000000000000000000.log"


async def stored_group_state(data: Path, scratch: Path) -> dict[int, str]:
    """Open a copy of group g's files, as a restart would, and return t/0's offsets 0-9 as done/leased/ready/new."""
    copy = scratch / "group-copy"
    shutil.copytree(data / "groups" / "g", copy)
    group = await Group.open("g", copy)
    try:
        state = group.states[("t", 0)]
        return {offset: "done" if state.is_done(offset) else
                (state.pending[offset].state.value if offset in state.pending else "new")
                for offset in range(10) if offset < 3}
    finally:
        await group.close()
        shutil.rmtree(copy)


async def test_full_journal_ack_retry_stored(tmp_path: Path, fill_disk,
                                             caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    async with logq.open(data) as log:
        await log.send_batch("t", [b"a", b"b", b"c"])
        consumer = log.consumer("t", group="g", auto_ack=False)
        messages = await consumer.receive(3)
        disk = fill_disk("pwrite", JOURNAL_SEGMENT)

        with pytest.raises(DiskFullError, match="free disk space and retry"):
            await consumer.ack(messages[0])
        with pytest.raises(DiskFullError):
            await consumer.ack(messages[1])

        assert disk.failures == 2
        assert "kept for the next write" in caplog.text
        disk.full = False
        # The state already counts the message as done, so the retry acks nothing new, but it must
        # not return before the journal contains both acks that failed.
        assert await consumer.ack(messages[0]) == 0
        # A restart counts the lease of offset 2 as lost, so it is ready there.
        assert await stored_group_state(data, tmp_path) == {0: "done", 1: "done", 2: "ready"}
        await consumer.close()


async def test_receive_on_full_journal_leases_nothing(tmp_path: Path, fill_disk) -> None:
    data = tmp_path / "data"
    async with logq.open(data) as log:
        await log.send_batch("t", [b"a", b"b", b"c"])
        consumer = log.consumer("t", group="g", auto_ack=False)
        [first] = await consumer.receive(1)
        await consumer.ack(first)
        disk = fill_disk("pwrite", JOURNAL_SEGMENT)

        with pytest.raises(DiskFullError):
            await consumer.receive(2)

        disk.full = False
        again = await consumer.receive(2)
        assert [(m.offset, m.delivery_count) for m in again] == [(1, 1), (2, 1)]
        await consumer.ack(again)
        assert await stored_group_state(data, tmp_path) == {0: "done", 1: "done", 2: "done"}
        await consumer.close()


async def test_full_journal_close_snapshot_keeps_events(tmp_path: Path, fill_disk,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    log = await logq.open(data)
    await log.send_batch("t", [b"a", b"b", b"c"])
    consumer = log.consumer("t", group="g", auto_ack=False)
    messages = await consumer.receive(3)
    disk = fill_disk("pwrite", JOURNAL_SEGMENT)
    with pytest.raises(DiskFullError):
        await consumer.ack(messages[1])
    # The consumer's release cannot be journaled either, so close reports the error, but it still
    # closes every part, and the snapshot (another file) holds the ack and the release.
    with pytest.raises(DiskFullError):
        await log.close()
    assert log.closed
    assert "could not be journaled at close" in caplog.text
    disk.full = False

    async with logq.open(data) as log:
        consumer = log.consumer("t", group="g", auto_ack=False)
        redelivered = await consumer.receive(3)
        assert "contains 2 events that were never written to the journal" in caplog.text
        assert [(m.offset, m.delivery_count) for m in redelivered] == [(0, 2), (2, 2)]
        await consumer.ack(redelivered[0])
        await consumer.close()
        # Without the snapshot moved to the journal end, a reopen would skip this ack.
        assert await stored_group_state(data, tmp_path) == {0: "done", 1: "done", 2: "ready"}


async def test_nack_on_full_journal_still_wakes_waiting_consumers(tmp_path: Path, fill_disk) -> None:
    async with logq.open(tmp_path / "data") as log:
        await log.send("t", b"job")
        first = log.consumer("t", group="g", auto_ack=False)
        second = log.consumer("t", group="g", auto_ack=False)
        [message] = await first.receive(1)
        waiting = asyncio.create_task(second.receive(1, timeout=None))
        await asyncio.sleep(0.05)
        disk = fill_disk("pwrite", JOURNAL_SEGMENT)

        with pytest.raises(DiskFullError):
            await first.nack(message)

        # The nack is applied in memory, so the waiting consumer gets the message at once.
        disk.full = False
        [again] = await asyncio.wait_for(waiting, timeout=5)
        assert (again.offset, again.delivery_count) == (0, 2)
        # A retried nack finds the lease already ended, which is what the failed call did.
        with pytest.raises(logq.LeaseError):
            await first.nack(message)
        await second.ack(again)
        await first.close()
        await second.close()


# -- the priority index ----------------------------------------------------------------------------------

PRIORITY_FAILURES = [
    pytest.param("fsync", "priority.index", id="index file fsync"),
    pytest.param("fsync", "priority.checkpoint.tmp", id="checkpoint fsync"),
    pytest.param("open", "priority.checkpoint.tmp", id="checkpoint create"),
]


@pytest.mark.parametrize(("function", "suffix"), PRIORITY_FAILURES)
async def test_priority_flush_full(open_log, tmp_path: Path, fill_disk, caplog: pytest.LogCaptureFixture,
                                   function: str, suffix: str) -> None:
    log = await open_log()
    index = await PriorityIndex.open(log)
    base_offset, _ = await log.append(records_from(0, 3, priority=2))
    for offset in range(base_offset, base_offset + 3):
        index.add(offset, 2)
    directory = tmp_path / "partition"
    disk = fill_disk(function, suffix)

    with pytest.raises(DiskFullError, match="flushing the priority index; free disk space and retry|"
                                            "priority.checkpoint: no space left"):
        await index.flush()

    assert disk.failures >= 1
    assert list(directory.glob("*.tmp")) == []
    assert list(index.offsets(2)) == [0, 1, 2]
    disk.full = False
    await index.flush()
    await index.close()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="logq.consumers.priority_index"):
        reopened = await PriorityIndex.open(log)
    assert list(reopened.offsets(2)) == [0, 1, 2]
    assert "rebuilt" not in caplog.text
    assert "trimmed" not in caplog.text
    await reopened.close()


async def test_send_succeeds_when_priority_flush_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    # The flush after an append is bookkeeping: the message already has its offset,
    # so a full disk there is logged and the send returns.

    async def full_flush(self: PriorityIndex) -> None:
        raise DiskFullError(f"{self.directory}: no space left while flushing the priority index")

    monkeypatch.setattr(topics, "PRIORITY_FLUSH_ENTRIES", 1)
    async with logq.open(tmp_path / "data") as log:
        await log.create_topic("t")
        monkeypatch.setattr(PriorityIndex, "flush", full_flush)
        with caplog.at_level(logging.ERROR, logger="logq.topics"):
            offset = await log.send("t", b"urgent", priority=4)
        monkeypatch.undo()
        assert offset == 0
        assert "flushing the priority index of t/0 failed" in caplog.text
        [message] = await log.consumer("t", group="g").receive(1)
        assert (message.offset, message.priority) == (0, 4)


# -- a real full file system ---------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """Mount a 1 MiB tmpfs at tmp_path/tmpfs, or skip when mounting is not allowed (it needs root)."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    try:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot run mount for a tmpfs: {exc}")
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], capture_output=True, timeout=10, check=False)


async def test_real_full_tmpfs(small_tmpfs: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = small_tmpfs / "partition"
    config = LogConfig(fsync="always", segment_bytes=64 * 1024)
    spare = small_tmpfs / "spare"
    spare.write_bytes(b"\0" * 256 * 1024)
    log = await PartitionLog.open(directory, config)
    appended = 0
    try:
        with pytest.raises(DiskFullError, match="no space left on the device.*free disk space and retry"):
            for _ in range(10_000):
                await log.append([RecordInput(value=value_for(appended) * 100)])
                appended += 1
        # A failed segment write or roll assigns no offset. A failed index write or
        # fsync comes after the write, so that batch keeps its offset.
        assert log.log_end_offset - appended in (0, 1)
        assert appended > 100

        spare.unlink()
        await log.flush()
        end_offset = log.log_end_offset
        assert await log.append([RecordInput(value=value_for(end_offset) * 100)]) == (end_offset, end_offset + 1)
        values = await read_values(log)
    finally:
        await log.close()

    assert values == [value_for(offset) * 100 for offset in range(end_offset + 1)]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="logq.segments"):
        reopened = await PartitionLog.open(directory, config)
    try:
        assert reopened.log_end_offset == end_offset + 1
        assert await read_values(reopened) == values
    finally:
        await reopened.close()
    assert "truncated" not in caplog.text
    assert "rebuilding" not in caplog.text
