"""The group journal: the event log that a consumer group's state is rebuilt from.

A group lives in `<data dir>/groups/<name>/`. Its journal is a partition log
(`journal/`) written with the segment engine, one JSON event per record, for
example:

    {"event": "deliver", "topic": "t", "partition": 0, "deadline": 1700000030.0,
     "messages": [[42, 0, null]]}
    {"event": "ack", "topic": "t", "partition": 0, "ranges": [[40, 43]]}

docs/format.md lists every event type. The group applies events; this module
only stores them. Readers skip event types they do not know.

`snapshot.json` stores the whole group state as of a journal offset. Opening
returns the snapshot and the events after it. The group writes a new snapshot
every `snapshot_every` events and on close; journal segments before the
snapshot are then deleted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import orjson

from logq.errors import CorruptJournalError, CorruptRecordError
from logq.segments import FLAG_JSON, LogConfig, PartitionLog, RecordInput
from logq.segments.files import write_file_atomically

logger = logging.getLogger(__name__)

SNAPSHOT_FILE_NAME: Final = "snapshot.json"
JOURNAL_DIR_NAME: Final = "journal"
JOURNAL_SEGMENT_BYTES: Final = 1024 * 1024

Event = dict[str, Any]


class GroupJournal:
    """Persistence of one group's state: a snapshot plus the events after it."""

    def __init__(self, directory: Path, log: PartitionLog, snapshot_every: int) -> None:
        self.directory = directory
        self.log = log
        self.snapshot_every = snapshot_every
        self.events_since_snapshot = 0
        self._snapshot_lock = asyncio.Lock()

    @classmethod
    async def open(
        cls, directory: Path, *, fsync: str = "interval", snapshot_every: int = 10_000
    ) -> tuple[GroupJournal, Event | None, list[Event]]:
        """Open the journal in `directory`; return it, the snapshot (or None) and the events after it.

        Raises CorruptJournalError when the snapshot or an event does not decode.
        """
        directory.mkdir(parents=True, exist_ok=True)
        config = LogConfig(segment_bytes=JOURNAL_SEGMENT_BYTES, fsync=fsync)  # type: ignore[arg-type]
        log = await PartitionLog.open(directory / JOURNAL_DIR_NAME, config)
        journal = cls(directory, log, snapshot_every)
        try:
            snapshot = journal._load_snapshot()
            start = log.log_start_offset
            if snapshot is not None:
                covered = snapshot["journal_offset"] + snapshot.get("unwritten_events", 0)
                start = max(covered, start)
                if covered > log.log_end_offset:
                    await journal._cover_lost_events(snapshot, covered)
            events = await journal._read_events(start)
        except BaseException:
            await log.close()
            raise
        journal.events_since_snapshot = len(events)
        logger.info(
            "opened group journal %s: snapshot at %s, %d events after it",
            directory, None if snapshot is None else snapshot["journal_offset"], len(events),
        )
        return journal, snapshot, events

    def _load_snapshot(self) -> Event | None:
        path = self.directory / SNAPSHOT_FILE_NAME
        try:
            snapshot = orjson.loads(path.read_bytes())
            if not isinstance(snapshot, dict) or not isinstance(snapshot.get("journal_offset"), int):
                raise TypeError("journal_offset is missing")
            unwritten = snapshot.get("unwritten_events", 0)
            if not isinstance(unwritten, int) or isinstance(unwritten, bool) or unwritten < 0:
                raise TypeError(f"unwritten_events is {unwritten!r}, not a count")
            return snapshot
        except FileNotFoundError:
            return None
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise CorruptJournalError(
                f"{path}: not a valid group snapshot ({exc}); delete it to rebuild the state "
                "from the journal, which still contains every event after the last snapshot"
            ) from exc

    async def _cover_lost_events(self, snapshot: Event, covered: int) -> None:
        """Rewrite a snapshot that contains events the journal lost, so that it starts at the journal end.

        A snapshot counts the events that were queued when it was taken. When
        the process stopped before they were written, the journal ends below
        the offset the snapshot covers, and the next events would land in that
        gap, where a later open would skip them.
        """
        end = self.log.log_end_offset
        logger.warning(
            "group snapshot %s contains %d events that were never written to the journal; it now starts at the "
            "journal end offset %d", self.directory / SNAPSHOT_FILE_NAME, covered - end, end,
        )
        snapshot.update(journal_offset=end, unwritten_events=0)
        await asyncio.to_thread(write_file_atomically, self.directory / SNAPSHOT_FILE_NAME, orjson.dumps(snapshot))

    async def _read_events(self, offset: int) -> list[Event]:
        events: list[Event] = []
        while offset < self.log.high_watermark:
            try:
                records = await self.log.read(offset)
            except CorruptRecordError as exc:
                # Skipping events would rebuild a wrong state, so the group cannot open.
                raise CorruptJournalError(
                    f"group journal {self.log.directory}: the events from offset {offset} cannot be replayed "
                    f"({exc}); restore the group directory from a copy, or delete it to start the group over"
                ) from exc
            if not records:
                break
            for record in records:
                try:
                    event = orjson.loads(record.value)
                except orjson.JSONDecodeError as exc:
                    raise CorruptJournalError(
                        f"group journal {self.log.directory}: event at offset {record.offset} "
                        f"is not JSON ({exc})"
                    ) from exc
                if isinstance(event, dict):
                    events.append(event)
            offset = records[-1].offset + 1
        return events

    async def append(self, events: list[Event]) -> bool:
        """Store `events` as one batch; return True when a snapshot is due."""
        if not events:
            return False
        await self.log.append([RecordInput(value=orjson.dumps(event), flags=FLAG_JSON) for event in events])
        self.events_since_snapshot += len(events)
        return self.events_since_snapshot >= self.snapshot_every

    async def snapshot(self, state: Event | Callable[[], Event]) -> None:
        """Write the group state as the snapshot at the current journal end and drop older journal segments.

        Pass the state as a function that returns it, so it is taken after the
        flush, together with the journal end offset. A state taken earlier
        misses the events that other tasks journaled during the flush, and a
        reopen would then skip them. The caller must keep other appends out
        until this returns. Events the state contains that the journal stores
        next are counted in its `unwritten_events`; a reopen skips that many
        events after `journal_offset`. Snapshots run one at a time, because
        they share one temporary file.
        """
        async with self._snapshot_lock:
            await self.log.flush()
            # Nothing awaits between these two lines, so the state contains every event below journal_offset.
            journal_offset = self.log.log_end_offset
            body = state() if callable(state) else state
            data = orjson.dumps({"journal_offset": journal_offset, **body})
            write = asyncio.ensure_future(
                asyncio.to_thread(write_file_atomically, self.directory / SNAPSHOT_FILE_NAME, data)
            )
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                # The thread goes on writing the shared temporary file, so the lock is held until it ends.
                await asyncio.wait([write])
                raise
            self.events_since_snapshot = body.get("unwritten_events", 0)
            removed = await self.log.delete_segments_before(journal_offset)
        logger.info(
            "snapshot of group %s at journal offset %d; removed %d journal segments",
            self.directory.name, journal_offset, removed,
        )

    async def close(self) -> None:
        """Flush and close the journal."""
        await self.log.close()
