"""Delivery state of one consumer group on one partition, without any I/O.

The state moves through plain method calls, so property-based tests can drive
it against a model. Offsets below `committed` are done. Above it, an offset is
done (acked out of order), in flight (delivered to a consumer and not yet
acked), released (its consumer closed before acking it; delivered again
first) or not yet delivered (at or above `cursor`).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from logq.errors import OffsetOutOfRangeError


@dataclass
class PartitionState:
    """Committed offset, acks above it, and deliveries in flight for one partition."""

    committed: int
    cursor: int = -1
    done: set[int] = field(default_factory=set)
    in_flight: dict[int, int] = field(default_factory=dict)
    released: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.cursor < self.committed:
            self.cursor = self.committed

    def next_released(self, limit: int) -> list[int]:
        """Pop up to `limit` released offsets, lowest first, for redelivery."""
        taken: list[int] = []
        while self.released and len(taken) < limit:
            offset = heapq.heappop(self.released)
            if offset >= self.committed and offset not in self.done and offset not in self.in_flight:
                taken.append(offset)
        return taken

    def deliver(self, offset: int, owner: int) -> None:
        """Record that `offset` was handed to consumer `owner`."""
        self.in_flight[offset] = owner
        if offset >= self.cursor:
            self.cursor = offset + 1

    def is_done(self, offset: int) -> bool:
        """Return True when `offset` is below the committed offset or acked."""
        return offset < self.committed or offset in self.done

    def pass_over(self, offset: int) -> None:
        """Move the cursor past `offset` without delivering it (it is done already)."""
        if offset >= self.cursor:
            self.cursor = offset + 1

    def skip_to(self, offset: int) -> None:
        """Move the cursor past offsets that no longer exist (removed by retention)."""
        if offset > self.cursor:
            self.cursor = offset
        if offset > self.committed:
            self.committed = offset
            self.done = {done for done in self.done if done >= offset}

    def ack(self, offset: int, log_end_offset: int) -> bool:
        """Mark `offset` done; return False when it already was.

        Raises OffsetOutOfRangeError for an offset at or above the log end
        offset, which was never written.
        """
        if offset >= log_end_offset or offset < 0:
            raise OffsetOutOfRangeError(
                f"cannot ack offset {offset}: it was never written (log end offset {log_end_offset})"
            )
        self.in_flight.pop(offset, None)
        if offset < self.committed or offset in self.done:
            return False
        self.done.add(offset)
        while self.committed in self.done:
            self.done.remove(self.committed)
            self.committed += 1
        if self.cursor < self.committed:
            self.cursor = self.committed
        return True

    def release(self, owner: int) -> int:
        """Return the in-flight offsets of consumer `owner` for redelivery; return how many."""
        offsets = [offset for offset, holder in self.in_flight.items() if holder == owner]
        for offset in offsets:
            del self.in_flight[offset]
            heapq.heappush(self.released, offset)
        return len(offsets)

    def reset(self, offset: int) -> None:
        """Move the committed offset and the cursor to `offset`, forgetting acks and deliveries."""
        self.committed = offset
        self.cursor = offset
        self.done.clear()
        self.in_flight.clear()
        self.released.clear()
