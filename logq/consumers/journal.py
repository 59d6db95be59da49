"""The group journal: an event log of a consumer group's committed offsets.

A group lives in `<data dir>/groups/<name>/`. Its journal is a partition log
(`journal/`) written with the segment engine, one JSON event per record:

    {"event": "commit", "topic": "t", "partition": 0, "offset": 42}
    {"event": "reset",  "topic": "t", "partition": 0, "offset": 0}

"commit" moves the committed offset forward after acks; "reset" sets it to
any offset (a new group's start, or a user's reset). Readers ignore event
types they do not know, which leaves room for per-message events.

`snapshot.json` stores the committed offsets up to a journal offset. Opening
replays the snapshot and then the journal events after it. Every
`snapshot_every` events a new snapshot is written and the journal segments
before it are deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from logq.errors import CorruptJournalError
from logq.segments import FLAG_JSON, LogConfig, PartitionLog, RecordInput
from logq.segments.files import write_file_atomically

logger = logging.getLogger(__name__)

SNAPSHOT_FILE_NAME: Final = "snapshot.json"
JOURNAL_DIR_NAME: Final = "journal"
JOURNAL_SEGMENT_BYTES: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class OffsetEvent:
    """A "commit" or "reset" event for one topic partition."""

    event: str
    topic: str
    partition: int
    offset: int

    def encode(self) -> bytes:
        """Return the JSON bytes stored in the journal."""
        return orjson.dumps(
            {"event": self.event, "topic": self.topic, "partition": self.partition, "offset": self.offset}
        )


class GroupJournal:
    """Persistence of one group's committed offsets: snapshot plus event journal."""

    def __init__(self, directory: Path, log: PartitionLog, snapshot_every: int) -> None:
        self.directory = directory
        self.log = log
        self.snapshot_every = snapshot_every
        self._events_since_snapshot = 0

    @classmethod
    async def open(
        cls, directory: Path, *, fsync: str = "interval", snapshot_every: int = 10_000
    ) -> tuple[GroupJournal, dict[tuple[str, int], int]]:
        """Open the journal in `directory` and return it with the committed offsets it stores.

        Raises CorruptJournalError when the snapshot or an event does not decode.
        """
        directory.mkdir(parents=True, exist_ok=True)
        config = LogConfig(segment_bytes=JOURNAL_SEGMENT_BYTES, fsync=fsync)  # type: ignore[arg-type]
        log = await PartitionLog.open(directory / JOURNAL_DIR_NAME, config)
        journal = cls(directory, log, snapshot_every)
        try:
            committed, start = journal._load_snapshot()
            replayed = await journal._replay(start, committed)
        except BaseException:
            await log.close()
            raise
        logger.info(
            "opened group journal %s: %d partitions, replayed %d events after the snapshot at %d",
            directory, len(committed), replayed, start,
        )
        return journal, committed

    def _load_snapshot(self) -> tuple[dict[tuple[str, int], int], int]:
        path = self.directory / SNAPSHOT_FILE_NAME
        try:
            data = orjson.loads(path.read_bytes())
            committed = {(topic, int(partition)): int(offset) for topic, partition, offset in data["committed"]}
            start = int(data["journal_offset"])
        except FileNotFoundError:
            return {}, self.log.log_start_offset
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CorruptJournalError(
                f"{path}: not a valid group snapshot ({exc}); delete it to rebuild the state "
                "from the journal, which still holds every event after the last snapshot"
            ) from exc
        return committed, max(start, self.log.log_start_offset)

    async def _replay(self, offset: int, committed: dict[tuple[str, int], int]) -> int:
        count = 0
        while offset < self.log.log_end_offset:
            records = await self.log.read(offset)
            if not records:
                break
            for record in records:
                event = self._decode(record.value, record.offset)
                if event is not None:
                    committed[(event.topic, event.partition)] = event.offset
                count += 1
            offset = records[-1].offset + 1
        return count

    def _decode(self, value: bytes, offset: int) -> OffsetEvent | None:
        try:
            fields: dict[str, Any] = orjson.loads(value)
            if fields.get("event") not in ("commit", "reset"):
                return None
            return OffsetEvent(fields["event"], str(fields["topic"]), int(fields["partition"]), int(fields["offset"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptJournalError(
                f"group journal {self.log.directory}: event at offset {offset} does not decode ({exc})"
            ) from exc

    async def append(self, events: Iterable[OffsetEvent], committed: dict[tuple[str, int], int]) -> None:
        """Store `events` as one batch; snapshot `committed` when enough events accumulated."""
        records = [RecordInput(value=event.encode(), flags=FLAG_JSON) for event in events]
        if not records:
            return
        await self.log.append(records)
        self._events_since_snapshot += len(records)
        if self._events_since_snapshot >= self.snapshot_every:
            await self.snapshot(committed)

    async def snapshot(self, committed: dict[tuple[str, int], int]) -> None:
        """Write `committed` as the snapshot at the current journal end and drop older segments."""
        await self.log.flush()
        journal_offset = self.log.log_end_offset
        data = orjson.dumps(
            {
                "journal_offset": journal_offset,
                "committed": [[topic, partition, offset] for (topic, partition), offset in sorted(committed.items())],
            }
        )
        write_file_atomically(self.directory / SNAPSHOT_FILE_NAME, data)
        self._events_since_snapshot = 0
        removed = await self.log.delete_segments_before(journal_offset)
        logger.info(
            "snapshot of group %s at journal offset %d; removed %d journal segments",
            self.directory.name, journal_offset, removed,
        )

    async def close(self) -> None:
        """Flush and close the journal."""
        await self.log.close()
