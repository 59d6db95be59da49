"""Model-based test: hypothesis drives a real Log and compares it with an in-memory model of one group.

The machine appends messages with priorities and keys to a one-partition
topic whose small segments make size retention delete old messages, and two
consumers of one group receive, ack, nack and extend them. A fake clock makes
leases expire, and rules reset the group and close and reopen the whole log.
The model tracks for each offset whether it is new, leased (to which
consumer and until when), ready again, done or deleted by retention, and each rule checks the
real log against it.

Hypothesis rules are synchronous, so the machine owns an `asyncio.Runner`
and runs each rule's coroutine on it.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import logq

TOPIC = "jobs"
GROUP = "g"
OTHER_GROUP = "h"  # reads the same topic and only acks, so it must see every message once whatever "g" does
LEASE_SECONDS = 10.0
SEGMENT_BYTES = 4096
RETENTION_BYTES = 3 * SEGMENT_BYTES
VALUE_PADDING = "x" * 1200  # 3 messages per segment, so retention starts after about 12 sends
CONSUMERS = 2
STEP_COUNTER = {"steps": 0, "examples": 0, "lease_errors": 0, "retention": 0, "expired": 0}


class FakeClock:
    """A clock for leases that moves only when the test advances it, in seconds since the epoch."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Entry:
    """The model's view of one offset in the group."""

    priority: int
    deliveries: int = 0
    owner: int | None = None  # consumer index holding the lease
    deadline: float = 0.0
    done: bool = False


class LogMachine(RuleBasedStateMachine):
    """Compare a real Log with the model over sends, receives, acks, nacks, rejects, expiry, resets and reopens."""

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.directory = Path(tempfile.mkdtemp(prefix="logq-model-"))
        self.clock = FakeClock()
        self.log: logq.Log | None = None
        self.consumers: list[logq.Consumer] = []
        self.other: logq.Consumer | None = None
        self.entries: dict[int, Entry] = {}
        self.log_start = 0
        self.committed = 0
        self.held: list[tuple[int, logq.Message]] = []  # (consumer index, message) pairs received so far
        self.other_done: set[int] = set()
        self.dead_letters: list[int] = []  # source offsets, in the order they were rejected
        STEP_COUNTER["examples"] += 1

    def run(self, coroutine: Any) -> Any:
        """Run one rule's coroutine on the machine's event loop, bounded so a deadlock fails fast."""
        STEP_COUNTER["steps"] += 1
        return self.runner.run(asyncio.wait_for(coroutine, 20))

    async def _open(self, *, create: bool = False) -> None:
        self.log = await logq.open(self.directory, clock=self.clock)
        if create:
            await self.log.create_topic(TOPIC, segment_bytes=SEGMENT_BYTES, retention_bytes=RETENTION_BYTES)
            await self.log.configure_group(GROUP, lease_timeout=LEASE_SECONDS, max_deliveries=0)
        self.consumers = [self.log.consumer(TOPIC, group=GROUP, auto_ack=False) for _ in range(CONSUMERS)]
        self.other = self.log.consumer(TOPIC, group=OTHER_GROUP, auto_ack=False)

    @initialize()
    def start(self) -> None:
        async def create() -> None:
            await self._open(create=True)

        self.run(create())

    def teardown(self) -> None:
        try:
            if self.log is not None:
                self.drain_all()
                self.runner.run(self.log.close())
        finally:
            self.runner.close()
            shutil.rmtree(self.directory, ignore_errors=True)

    # -- model helpers ------------------------------------------------------------

    def _live(self) -> dict[int, Entry]:
        return {offset: entry for offset, entry in self.entries.items() if offset >= self.log_start}

    def _leased(self, entry: Entry) -> bool:
        return entry.owner is not None and entry.deadline > self.clock()

    def _expire(self) -> None:
        """Apply lease expiry to the model: a lease whose deadline passed is ready again."""
        for entry in self.entries.values():
            if entry.owner is not None and entry.deadline <= self.clock():
                entry.owner = None
                STEP_COUNTER["expired"] += 1

    def _ready(self) -> dict[int, Entry]:
        self._expire()
        return {o: e for o, e in self._live().items() if not e.done and e.owner is None}

    def _message_of(self, index: int) -> tuple[int, logq.Message] | None:
        live = [(c, m) for c, m in self.held if m.offset >= self.log_start and m.offset in self.entries]
        return live[index % len(live)] if live else None

    # -- rules --------------------------------------------------------------------------

    @rule(priorities=st.lists(st.integers(0, 3), min_size=1, max_size=4),
          key=st.sampled_from([None, "a", "b", b"\x00c"]))
    def send(self, priorities: list[int], key: str | bytes | None) -> None:
        assert self.log is not None
        log = self.log

        async def append() -> list[int]:
            offsets = []
            for priority in priorities:
                offsets.append(await log.send(TOPIC, {"n": len(self.entries), "pad": VALUE_PADDING},
                                              key=key, priority=priority))
            return offsets

        offsets = self.run(append())
        expected_first = max(self.entries, default=-1) + 1
        assert offsets == list(range(expected_first, expected_first + len(priorities)))
        for offset, priority in zip(offsets, priorities):
            self.entries[offset] = Entry(priority=priority)
        log_start = self.log.describe_topic(TOPIC).partitions[0].log_start_offset
        STEP_COUNTER["retention"] += log_start > self.log_start
        self.log_start = log_start

    @rule(consumer=st.integers(0, CONSUMERS - 1), count=st.integers(1, 5))
    def receive(self, consumer: int, count: int) -> None:
        ready = self._ready()
        messages = self.run(self.consumers[consumer].receive(count, timeout=0))

        assert len(messages) == min(count, len(ready))
        offsets = [m.offset for m in messages]
        assert set(offsets) <= set(ready), (offsets, sorted(ready))
        order = [(-m.priority, m.offset) for m in messages]
        assert order == sorted(order), "not by priority, then in log order"
        # No ready message that sorts before the last one returned was passed over.
        if messages:
            last = order[-1]
            skipped = [o for o in ready if o not in offsets and (-ready[o].priority, o) < last]
            assert not skipped, (offsets, skipped)
        for message in messages:
            entry = self.entries[message.offset]
            assert message.priority == entry.priority
            assert message.delivery_count == entry.deliveries + 1
            entry.deliveries += 1
            entry.owner = consumer
            entry.deadline = self.clock() + LEASE_SECONDS
            self.held.append((consumer, message))

    @precondition(lambda self: self.held)
    @rule(consumer=st.integers(0, CONSUMERS - 1), index=st.integers(0, 1000))
    def ack(self, consumer: int, index: int) -> None:
        picked = self._message_of(index)
        if picked is None:
            return
        _, message = picked
        entry = self.entries[message.offset]
        newly_done = self.run(self.consumers[consumer].ack(message))

        below_committed = message.offset < self.committed
        assert newly_done == (0 if entry.done or below_committed else 1)
        entry.done = True
        entry.owner = None

    @precondition(lambda self: self.held)
    @rule(consumer=st.integers(0, CONSUMERS - 1), index=st.integers(0, 1000))
    def nack(self, consumer: int, index: int) -> None:
        picked = self._message_of(index)
        if picked is None:
            return
        _, message = picked
        self._expire()
        entry = self.entries[message.offset]
        holds = entry.owner == consumer and self._leased(entry) and not entry.done
        try:
            self.run(self.consumers[consumer].nack(message))
        except logq.LeaseError:
            assert not holds
            STEP_COUNTER["lease_errors"] += 1
            return
        assert holds
        entry.owner = None

    @precondition(lambda self: self.held)
    @rule(consumer=st.integers(0, CONSUMERS - 1), index=st.integers(0, 1000),
          seconds=st.sampled_from([1.0, 5.0, 30.0]))
    def extend(self, consumer: int, index: int, seconds: float) -> None:
        picked = self._message_of(index)
        if picked is None:
            return
        _, message = picked
        self._expire()
        entry = self.entries[message.offset]
        holds = entry.owner == consumer and self._leased(entry) and not entry.done
        try:
            deadline = self.run(self.consumers[consumer].extend(message, seconds=seconds))
        except logq.LeaseError:
            assert not holds
            STEP_COUNTER["lease_errors"] += 1
            return
        assert holds
        assert deadline == self.clock() + seconds
        entry.deadline = deadline

    @precondition(lambda self: self.held)
    @rule(consumer=st.integers(0, CONSUMERS - 1), index=st.integers(0, 1000))
    def reject(self, consumer: int, index: int) -> None:
        picked = self._message_of(index)
        if picked is None:
            return
        _, message = picked
        self._expire()
        entry = self.entries[message.offset]
        holds = entry.owner == consumer and self._leased(entry) and not entry.done
        try:
            self.run(self.consumers[consumer].reject(message, reason="model"))
        except logq.LeaseError:
            assert not holds
            STEP_COUNTER["lease_errors"] += 1
            return
        assert holds
        entry.owner = None
        entry.done = True
        self.dead_letters.append(message.offset)
        assert self.log is not None
        letters = self.run(self.log.dead_letters(TOPIC, group=GROUP))
        assert [letter.source_offset for letter in letters] == self.dead_letters

    @rule(seconds=st.sampled_from([0.5, 3.0, 9.75, 12.0, 40.0]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(to=st.sampled_from(["earliest", "latest"]))
    def reset(self, to: str) -> None:
        assert self.log is not None
        rows = self.run(self.log.reset_group(GROUP, TOPIC, to=to))
        high_watermark = max(self.entries, default=-1) + 1
        expected = self.log_start if to == "earliest" else high_watermark
        assert rows[0].committed_offset == expected
        self.committed = expected
        # A reset clears every delivery: counts, leases and acks above the new position.
        for offset, entry in self.entries.items():
            self.entries[offset] = Entry(priority=entry.priority, done=offset < expected)
        self.held = []

    @rule()
    def reopen(self) -> None:
        assert self.log is not None
        self.run(self.log.close())
        self.run(self._open())
        # Closing a consumer makes its leases ready again; their delivery counts stay.
        for entry in self.entries.values():
            entry.owner = None
        self.held = []

    @rule()
    def drain_all(self) -> None:
        """Let every lease expire, then receive and ack everything: each live message not done arrives once."""
        self.clock.advance(LEASE_SECONDS * 5)
        expected = set(self._ready())
        consumer = self.consumers[0]

        async def drain(consumer: logq.Consumer) -> list[logq.Message]:
            received = []
            while batch := await consumer.receive(50, timeout=0):
                received.extend(batch)
                await consumer.ack(batch)
            return received

        received = self.run(drain(consumer))
        offsets = [m.offset for m in received]
        assert len(offsets) == len(set(offsets))
        assert set(offsets) == expected
        for message in received:
            entry = self.entries[message.offset]
            assert message.delivery_count == entry.deliveries + 1
            entry.deliveries += 1
            entry.done = True
            entry.owner = None

        assert self.other is not None
        other_offsets = [m.offset for m in self.run(drain(self.other))]
        assert len(other_offsets) == len(set(other_offsets))
        assert set(other_offsets) == set(self._live()) - self.other_done
        self.other_done.update(other_offsets)

    # -- invariants --------------------------------------------------------------------

    @invariant()
    def committed_matches_model(self) -> None:
        if self.log is None:
            return
        rows = self.run(self.log.describe_group(GROUP))
        if not rows:
            return
        committed = rows[0].committed_offset
        assert committed >= self.committed, "the committed offset moved backwards without a reset"
        self.committed = committed
        live = self._live()
        first_open = min((o for o, e in live.items() if not e.done), default=max(self.entries, default=-1) + 1)
        assert committed <= max(first_open, self.log_start)


LogMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLogModel = LogMachine.TestCase


def test_model_step_report() -> None:
    """Print the machines, coroutine runs, lease errors, retention deletions and expiries counted so far (see pytest -s)."""
    print("model:", ", ".join(f"{name} {count}" for name, count in STEP_COUNTER.items()))
