"""A consumer group: its delivery state per partition, persisted by its journal."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from pathlib import Path

from logq.consumers.journal import GroupJournal, OffsetEvent
from logq.consumers.state import PartitionState

logger = logging.getLogger(__name__)


class Group:
    """The state of one consumer group across the partitions it reads.

    Committed offsets are durable through the journal; in-flight deliveries
    and out-of-order acks live in memory only, so after a restart everything
    from the committed offset on is delivered again (at-least-once).
    Coroutines here are safe from any task of the event loop.
    """

    def __init__(self, name: str, directory: Path, journal: GroupJournal, committed: dict[tuple[str, int], int]) -> None:
        self.name = name
        self.directory = directory
        self.journal = journal
        self.states = {key: PartitionState(committed=offset) for key, offset in committed.items()}
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, name: str, directory: Path, *, fsync: str = "interval") -> Group:
        """Open or create the group stored in `directory`."""
        journal, committed = await GroupJournal.open(directory, fsync=fsync)
        return cls(name, directory, journal, committed)

    def committed_offsets(self) -> dict[tuple[str, int], int]:
        """Committed offset per (topic, partition)."""
        return {key: state.committed for key, state in self.states.items()}

    async def join(self, topic: str, partition: int, initial_offset: int) -> PartitionState:
        """Return the state of a partition, starting it at `initial_offset` if the group never read it."""
        async with self._lock:
            state = self.states.get((topic, partition))
            if state is None:
                state = PartitionState(committed=initial_offset)
                self.states[(topic, partition)] = state
                await self._write([OffsetEvent("reset", topic, partition, initial_offset)])
                logger.info("group %s starts %s/%d at offset %d", self.name, topic, partition, initial_offset)
            return state

    async def ack(self, topic: str, partition: int, offsets: Iterable[int], log_end_offset: int) -> int:
        """Mark `offsets` done and journal the committed offset if it moved; return how many were new.

        Raises OffsetOutOfRangeError (before changing anything) for an offset
        that was never written.
        """
        offsets = list(offsets)
        state = self.states[(topic, partition)]
        for offset in offsets:
            if offset >= log_end_offset or offset < 0:
                state.ack(offset, log_end_offset)  # raises with the offending offset
        async with self._lock:
            before = state.committed
            newly_done = sum(state.ack(offset, log_end_offset) for offset in offsets)
            if state.committed != before:
                await self._write([OffsetEvent("commit", topic, partition, state.committed)])
        return newly_done

    async def reset(self, topic: str, partition: int, offset: int) -> None:
        """Set the committed offset of a partition to `offset` and forget deliveries above it."""
        async with self._lock:
            state = self.states.setdefault((topic, partition), PartitionState(committed=offset))
            state.reset(offset)
            await self._write([OffsetEvent("reset", topic, partition, offset)])
        logger.info("group %s reset %s/%d to offset %d", self.name, topic, partition, offset)

    async def skip_removed(self, topic: str, partition: int, log_start_offset: int) -> None:
        """Move a partition past offsets that retention deleted before the group read them."""
        state = self.states[(topic, partition)]
        if state.committed < log_start_offset:
            logger.warning(
                "group %s: offsets %d..%d of %s/%d were deleted by retention before they were "
                "acked; continuing at the log start offset %d",
                self.name, state.committed, log_start_offset - 1, topic, partition, log_start_offset,
            )
            async with self._lock:
                state.skip_to(log_start_offset)
                await self._write([OffsetEvent("reset", topic, partition, state.committed)])

    def release(self, owner: int) -> int:
        """Make the in-flight messages of consumer `owner` ready again; return how many."""
        return sum(state.release(owner) for state in self.states.values())

    async def _write(self, events: list[OffsetEvent]) -> None:
        await self.journal.append(events, self.committed_offsets())

    async def close(self) -> None:
        """Snapshot the committed offsets, so the next open replays nothing, and close the journal."""
        await self.journal.snapshot(self.committed_offsets())
        await self.journal.close()
