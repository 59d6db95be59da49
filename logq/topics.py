"""Topics: their settings, their partitions and the choice of partition for a message.

A topic lives in `<data dir>/topics/<name>/`: `topic.json` contains its
settings and each partition is a subdirectory named by its number.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import shutil
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Final

import orjson

from logq.errors import InvalidConfigError, StorageError
from logq.consumers import PriorityIndex
from logq.segments import CODEC_NAMES, LogConfig, PartitionLog, PlainRecords, RecordInput
from logq.segments.files import fsync_directory, write_file_atomically

logger = logging.getLogger(__name__)

CONFIG_FILE_NAME: Final = "topic.json"
MAX_PARTITIONS: Final = 1024
MIN_SEGMENT_BYTES: Final = 4096
FSYNC_MODES: Final = ("always", "interval", "never")
# Priority index entries written per flush. The index catches up from the log
# on open, so this bounds the records a reopen after a crash reads again.
PRIORITY_FLUSH_ENTRIES: Final = 4096
# Offsets appended without a new priority index checkpoint before a flush
# writes one. It bounds the same re-read for topics that send only priority 0,
# to about a second of decoding on the benchmark machine.
PRIORITY_CHECKPOINT_OFFSETS: Final = 1_000_000


@dataclass(frozen=True, slots=True)
class TopicConfig:
    """Settings of a topic, fixed when it is created.

    `partitions`: number of partitions, 1..1024. `segment_bytes`: size at which
    a segment rolls (default 16 MiB). `compression`: "none" or "zstd", per
    batch. `fsync`: "always", "interval" or "never" (see `LogConfig`).
    `fsync_interval_ms`: period of the "interval" mode. `max_message_bytes`:
    limit on key, headers and value together (default 1 MiB).
    `retention_bytes` and `retention_ms`: per-partition limits of size and
    age after which whole segments are deleted; None keeps everything.
    """

    partitions: int = 1
    segment_bytes: int = 16 * 1024 * 1024
    compression: str = "none"
    fsync: str = "interval"
    fsync_interval_ms: int = 200
    max_message_bytes: int = 1024 * 1024
    retention_bytes: int | None = None
    retention_ms: int | None = None

    def __post_init__(self) -> None:
        _check_int("partitions", self.partitions, 1, MAX_PARTITIONS)
        _check_int("segment_bytes", self.segment_bytes, MIN_SEGMENT_BYTES, 2**31 - 1)
        _check_int("fsync_interval_ms", self.fsync_interval_ms, 1, 3_600_000)
        _check_int("max_message_bytes", self.max_message_bytes, 1, 64 * 1024 * 1024)
        if self.retention_bytes is not None:
            _check_int("retention_bytes", self.retention_bytes, 1, 2**62)
        if self.retention_ms is not None:
            _check_int("retention_ms", self.retention_ms, 1, 2**62)
        if self.compression not in CODEC_NAMES:
            raise InvalidConfigError(
                f"invalid compression {self.compression!r}; use one of {', '.join(CODEC_NAMES)}"
            )
        if self.fsync not in FSYNC_MODES:
            raise InvalidConfigError(f"invalid fsync mode {self.fsync!r}; use one of {', '.join(FSYNC_MODES)}")

    def log_config(self) -> LogConfig:
        """Return the storage settings of each partition."""
        return LogConfig(
            segment_bytes=self.segment_bytes,
            fsync=self.fsync,  # type: ignore[arg-type]
            fsync_interval_ms=self.fsync_interval_ms,
            codec=CODEC_NAMES[self.compression],
            retention_bytes=self.retention_bytes,
            retention_ms=self.retention_ms,
        )

    def to_json(self) -> bytes:
        """Encode the settings as the contents of topic.json."""
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes, path: Path) -> TopicConfig:
        """Decode topic.json; raises StorageError naming `path` when it is damaged."""
        try:
            values: dict[str, Any] = orjson.loads(data)
            known = {field.name for field in fields(cls)}
            return cls(**{name: value for name, value in values.items() if name in known})
        except (orjson.JSONDecodeError, TypeError, InvalidConfigError) as exc:
            raise StorageError(f"{path}: not a valid topic configuration ({exc}); restore it from a copy") from exc


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidConfigError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise InvalidConfigError(f"{name}={value} is out of range; use a value from {low} to {high}")


def partition_for_key(key: bytes, partitions: int) -> int:
    """Return the partition of a keyed message: CRC-32 of the key modulo the partition count.

    Stable across processes and Python versions, unlike `hash()`.
    """
    return zlib.crc32(key) % partitions


class Topic:
    """An open topic: its settings and one `PartitionLog` per partition."""

    def __init__(
        self,
        name: str,
        directory: Path,
        config: TopicConfig,
        partitions: list[PartitionLog],
        priority_indexes: list[PriorityIndex],
    ) -> None:
        self.name = name
        self.directory = directory
        self.config = config
        self.partitions = partitions
        self.priority_indexes = priority_indexes
        self._unflushed_priorities = [0] * len(partitions)
        # Each open starts the cycle at a random partition, so that many short-lived processes that
        # send a few keyless messages each (one `logq produce` per message, say) spread them too.
        first = random.randrange(config.partitions)
        self._round_robin = itertools.cycle([*range(first, config.partitions), *range(first)])
        # One future per task in `wait_for_append`, resolved directly by `notify_readers`:
        # an asyncio.Event under asyncio.wait_for took three loop iterations to wake a reader.
        self._waiters: list[asyncio.Future[bool]] = []
        self.notify_count = 0  # notify_readers calls so far, for waiters that must not miss one

    @classmethod
    async def create(cls, name: str, directory: Path, config: TopicConfig, *, staging: Path) -> Topic:
        """Create the topic's directory and settings file, then open it.

        The directory is prepared under `staging` and renamed into place, so a
        crash never leaves a topic directory without its settings file.
        """
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        write_file_atomically(staging / CONFIG_FILE_NAME, config.to_json())
        staging.rename(directory)
        fsync_directory(directory.parent)
        logger.info("created topic %s with %d partitions", name, config.partitions)
        return await cls.open(name, directory)

    @classmethod
    async def open(cls, name: str, directory: Path) -> Topic:
        """Open an existing topic and recover each partition."""
        path = directory / CONFIG_FILE_NAME
        try:
            config = TopicConfig.from_json(path.read_bytes(), path)
        except FileNotFoundError as exc:
            raise StorageError(f"{path}: missing; the topic directory is incomplete, restore it or delete the topic") from exc
        log_config = config.log_config()
        partitions = [
            await PartitionLog.open(directory / str(number), log_config) for number in range(config.partitions)
        ]
        indexes = [await PriorityIndex.open(partition) for partition in partitions]
        return cls(name, directory, config, partitions, indexes)

    async def close(self) -> None:
        """Close every partition (flushing it) and wake waiting readers."""
        for index in self.priority_indexes:
            await index.close()
        for partition in self.partitions:
            await partition.close()
        self.notify_readers()

    def choose_partition(self, key: bytes | None) -> int:
        """Return the partition for a message: by key hash, else round-robin."""
        if key is None:
            return next(self._round_robin)
        return partition_for_key(key, self.config.partitions)

    async def append(self, partition: int, records: Sequence[RecordInput]) -> int:
        """Append `records` to one partition as a batch and return the first offset."""
        index = self.priority_indexes[partition]
        if isinstance(records, PlainRecords):
            urgent = [(delta, records.priority) for delta in range(len(records))] if records.priority else []
        else:
            urgent = [(delta, record.priority) for delta, record in enumerate(records) if record.priority]

        def index_priorities(base_offset: int) -> None:
            for delta, priority in urgent:
                index.add(base_offset + delta, priority)
            index.cover(base_offset + len(records))

        base_offset, _ = await self.partitions[partition].append(records, on_written=index_priorities)
        if urgent:
            self._unflushed_priorities[partition] += len(urgent)
        if (self._unflushed_priorities[partition] >= PRIORITY_FLUSH_ENTRIES
                or index.uncheckpointed_offsets() >= PRIORITY_CHECKPOINT_OFFSETS):
            self._unflushed_priorities[partition] = 0
            try:
                await index.flush()
            except (OSError, StorageError) as exc:
                # The messages are stored with their offsets, so the send succeeded. The
                # index stays correct in memory, the next flush retries, and an open
                # catches the index up from the log.
                logger.error("flushing the priority index of %s/%d failed; retrying at the next flush: %s",
                             self.name, partition, exc)
        self.notify_readers()
        return base_offset

    def notify_readers(self) -> None:
        """Wake every task waiting in `wait_for_append`."""
        self.notify_count += 1
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(True)

    async def wait_for_append(self, timeout: float | None, *, since: int | None = None) -> bool:
        """Wait for the next append to any partition; return False on timeout.

        With `since`, a `notify_count` read earlier, returns at once when a
        notification came after that read, so a caller that looked for data
        and then waits cannot miss an append that happened in between.
        """
        if since is not None and since != self.notify_count:
            return True
        if timeout is not None and timeout <= 0:
            return False
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(waiter)
        timer = None if timeout is None else loop.call_later(timeout, _time_out, waiter)
        try:
            return await waiter
        finally:
            if timer is not None:
                timer.cancel()
            if waiter.cancelled() or not waiter.done() or not waiter.result():
                # Timed out or cancelled: this waiter is still in the list.
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)


def _time_out(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)
