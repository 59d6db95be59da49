"""End-to-end tests of consumer groups used as work queues, through the public API.

Lease deadlines and retry delays follow a fake clock passed to `logq.open`, so
these tests never wait for them in real time. The one exception is the test of
a blocking receive woken by a real lease expiry.
"""

from __future__ import annotations

import asyncio
import logging
import csv
import re
import time
import zlib
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import pytest

import logq
from logq.errors import LeaseError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
JOBS_CSV = SHARED_DATA / "jobs" / "AzureLLMInferenceTrace_code.csv"
OPENSSH_LOG = SHARED_DATA / "loghub" / "OpenSSH_2k.log"

START_TIME = 1_700_000_000.0  # 2023-11-14T22:13:20Z


class FakeClock:
    """A time source for `logq.open(clock=...)` that moves only when a test advances it."""

    def __init__(self, now: float = START_TIME) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def yield_to_tasks() -> None:
    """Let every ready task run until it blocks, without sleeping in real time."""
    for _ in range(20):
        await asyncio.sleep(0)


def values(messages: list[logq.Message]) -> list[Any]:
    return [message.value for message in messages]


async def committed_offset(log: logq.Log, group: str) -> int:
    [row] = await log.describe_group(group)
    return row.committed_offset


async def replay_messages(log: logq.Log, topic: str) -> list[logq.Message]:
    return [message async for message in log.replay(topic)]


# -- competing consumers -----------------------------------------------------------------


def read_jobs() -> list[dict[str, Any]]:
    """Return one job per row of the Azure LLM inference trace, numbered from 0."""
    with JOBS_CSV.open(newline="") as file:
        return [
            {"row": number, "arrival": row["TIMESTAMP"], "context_tokens": int(row["ContextTokens"])}
            for number, row in enumerate(csv.DictReader(file))
        ]


async def process_jobs(consumer: logq.Consumer, processed: list[dict[str, Any]]) -> None:
    """Receive and ack jobs until none is ready, appending each job to `processed`."""
    while batch := await consumer.receive(25):
        # Yielding before the ack lets the other workers lease their share meanwhile.
        await asyncio.sleep(0)
        processed.extend(message.value for message in batch)
        await consumer.ack_batch(batch)


@pytest.mark.skipif(not JOBS_CSV.exists(), reason=f"job trace {JOBS_CSV} is missing")
async def test_jobs_processed_once_per_group(data_dir: Path) -> None:
    jobs = read_jobs()
    expected_tokens = sum(job["context_tokens"] for job in jobs)
    assert len(jobs) == 8_819
    assert expected_tokens == 18_059_974

    async with logq.open(data_dir) as log:
        for start in range(0, len(jobs), 1000):
            await log.send_batch("jobs", jobs[start:start + 1000])
        groups = ("billing", "audit")
        workers = {group: [log.consumer("jobs", group=group, auto_ack=False) for _ in range(3)] for group in groups}
        processed = {group: [[] for _ in range(3)] for group in groups}
        await asyncio.gather(*(
            process_jobs(consumer, processed[group][number])
            for group in groups
            for number, consumer in enumerate(workers[group])
        ))

        for group in groups:
            everything = [job for share in processed[group] for job in share]
            rows = [job["row"] for job in everything]
            assert len(everything) == 8_819, group
            assert len(set(rows)) == 8_819, group
            assert sum(job["context_tokens"] for job in everything) == expected_tokens, group
            assert all(share for share in processed[group]), f"a worker of {group} got no job"
            assert await committed_offset(log, group) == 8_819, group
            assert await workers[group][0].receive(10) == [], group


# -- leases -------------------------------------------------------------------------------


async def test_expired_lease_redelivers(data_dir: Path, clock: FakeClock) -> None:
    async with logq.open(data_dir, clock=clock) as log:
        await log.configure_group("g", lease_timeout=10)
        await log.send("t", "job")
        first = log.consumer("t", group="g", auto_ack=False)
        second = log.consumer("t", group="g", auto_ack=False)

        [message] = await first.receive(1)
        assert message.delivery_count == 1
        assert message.lease_deadline == START_TIME + 10
        assert await second.receive(1) == []

        clock.advance(10.5)
        [again] = await second.receive(1)
        assert again.offset == message.offset
        assert again.delivery_count == 2


async def test_extend_keeps_lease(data_dir: Path, clock: FakeClock) -> None:
    async with logq.open(data_dir, clock=clock) as log:
        await log.configure_group("g", lease_timeout=10)
        await log.send("t", "job")
        first = log.consumer("t", group="g", auto_ack=False)
        second = log.consumer("t", group="g", auto_ack=False)
        [message] = await first.receive(1)

        clock.advance(8)
        assert await message.extend(seconds=10) == START_TIME + 18
        clock.advance(8)
        assert await second.receive(1) == []
        [row] = await log.describe_group("g")
        assert row.in_flight == 1

        assert await message.extend() == START_TIME + 26
        clock.advance(9)
        assert await second.receive(1) == []
        clock.advance(2)
        [again] = await second.receive(1)
        assert again.delivery_count == 2


async def test_receive_lease_overrides_group(data_dir: Path, clock: FakeClock) -> None:
    async with logq.open(data_dir, clock=clock) as log:
        await log.configure_group("g", lease_timeout=10)
        await log.send("t", "job")
        first = log.consumer("t", group="g", auto_ack=False)
        second = log.consumer("t", group="g", auto_ack=False)

        [message] = await first.receive(1, lease=60)
        assert message.lease_deadline == START_TIME + 60
        clock.advance(30)
        assert await second.receive(1) == []
        clock.advance(31)
        [again] = await second.receive(1)
        assert again.delivery_count == 2


async def redeliver_to_another(clock: FakeClock, second: logq.Consumer) -> None:
    clock.advance(11)
    assert len(await second.receive(1)) == 1


async def only_advance_clock(clock: FakeClock, second: logq.Consumer) -> None:
    clock.advance(11)


LATE_CALLS = {
    "nack": lambda message: message.nack(),
    "extend": lambda message: message.extend(5),
    "reject": lambda message: message.reject("too late"),
}


@pytest.mark.parametrize("operation", list(LATE_CALLS))
@pytest.mark.parametrize(
    "expire", [redeliver_to_another, only_advance_clock], ids=["redelivered", "deadline-passed"]
)
async def test_late_call_raises_lease_error(
    data_dir: Path, clock: FakeClock, operation: str, expire: Callable[..., Awaitable[None]]
) -> None:
    async with logq.open(data_dir, clock=clock) as log:
        await log.configure_group("g", lease_timeout=10)
        await log.send("t", "job")
        first = log.consumer("t", group="g", auto_ack=False)
        second = log.consumer("t", group="g", auto_ack=False)
        [message] = await first.receive(1)
        await expire(clock, second)

        with pytest.raises(LeaseError, match="offset 0"):
            await LATE_CALLS[operation](message)
        assert await log.dead_letters("t", group="g") == []


async def test_ack_after_expiry_works(data_dir: Path, clock: FakeClock) -> None:
    async with logq.open(data_dir, clock=clock) as log:
        await log.configure_group("g", lease_timeout=10)
        await log.send_batch("t", ["a", "b"])
        first = log.consumer("t", group="g", auto_ack=False)
        second = log.consumer("t", group="g", auto_ack=False)
        late_a, late_b = await first.receive(2)
        clock.advance(11)
        again_a, again_b = await second.receive(2)

        assert await second.ack(again_a) == 1
        assert await first.ack(late_a) == 0
        assert await first.ack(late_b) == 1
        assert await second.ack(again_b) == 0
        assert await committed_offset(log, "g") == 2
        with pytest.raises(LeaseError):
            await again_b.nack()


def test_lease_error_is_public() -> None:
    assert "LeaseError" in logq.__all__
    assert getattr(logq, "LeaseError", None) is LeaseError


# -- acks ---------------------------------------------------------------------------------


async def test_out_of_order_acks(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.send_batch("t", list(range(6)))
        consumer = log.consumer("t", group="g", auto_ack=False)
        messages = await consumer.receive(6)

        steps = [(3, 0), (1, 0), (0, 2), (2, 4), (5, 4), (4, 6)]
        for offset, expected in steps:
            await consumer.ack(messages[offset])
            assert await committed_offset(log, "g") == expected, f"after acking offset {offset}"


async def test_ack_batch_counts_new_acks(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.send_batch("t", list(range(4)))
        consumer = log.consumer("t", group="g", auto_ack=False)
        messages = await consumer.receive(4)

        assert await consumer.ack_batch(messages[1:3]) == 2
        assert await consumer.ack_batch(messages) == 2
        assert await consumer.ack_batch(messages) == 0
        assert await consumer.ack(messages[0]) == 0
        assert await committed_offset(log, "g") == 4


async def test_ack_unwritten_offset_raises(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.send_batch("t", ["a", "b"])
        consumer = log.consumer("t", group="g", auto_ack=False)
        [message] = await consumer.receive(1)
        # A forged message: the same delivery with an offset the log never wrote.
        unwritten = logq.Message.from_record("t", 0, message._record._replace(offset=7), group="g",
                                             consumer=message._consumer, delivery_count=1)

        with pytest.raises(logq.OffsetOutOfRangeError, match="offset 7"):
            await consumer.ack([message, unwritten])
        assert await committed_offset(log, "g") == 0
        assert await consumer.ack(message) == 1


async def test_sparse_acks_compact(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.send_batch("t", list(range(10_000)))
        consumer = log.consumer("t", group="g", auto_ack=False)
        messages = await consumer.receive(10_000)
        assert len(messages) == 10_000
        state = (await log.group("g")).states[("t", 0)]

        assert await consumer.ack_batch(messages[0::2]) == 5_000
        assert state.committed == 1
        assert state.done.range_count == 4_999

        assert await consumer.ack_batch(messages[1::2]) == 5_000
        assert state.committed == 10_000
        assert state.done.range_count == 0


# -- nacks and retry delays ---------------------------------------------------------------


async def test_nack_delay_defers_redelivery(data_dir: Path, clock: FakeClock) -> None:
    async with logq.open(data_dir, clock=clock) as log:
        await log.configure_group("g", lease_timeout=30)
        await log.send("t", "job")
        consumer = log.consumer("t", group="g", auto_ack=False)
        [message] = await consumer.receive(1)

        await message.nack(delay=20)
        assert await consumer.receive(1) == []
        [row] = await log.describe_group("g")
        assert row.waiting == 1
        clock.advance(19.5)
        assert await consumer.receive(1) == []
        clock.advance(0.5)
        [again] = await consumer.receive(1)
        assert again.delivery_count == 2


async def test_retry_backoff_caps_delay(data_dir: Path, clock: FakeClock) -> None:
    async with logq.open(data_dir, clock=clock) as log:
        await log.configure_group("g", retry_delay=10, retry_backoff=2, retry_max_delay=25, max_deliveries=0)
        await log.send("t", "job")
        consumer = log.consumer("t", group="g", auto_ack=False)

        for count, delay in enumerate([10, 20, 25, 25], start=1):
            [message] = await consumer.receive(1)
            assert message.delivery_count == count
            await message.nack()
            clock.advance(delay - 0.5)
            assert await consumer.receive(1) == [], f"redelivered before the delay of {delay} s"
            clock.advance(0.5)
        [last] = await consumer.receive(1)
        assert last.delivery_count == 5


async def test_expired_lease_uses_retry_delay(data_dir: Path, clock: FakeClock) -> None:
    async with logq.open(data_dir, clock=clock) as log:
        await log.configure_group("g", lease_timeout=10, retry_delay=5)
        await log.send("t", "job")
        consumer = log.consumer("t", group="g", auto_ack=False)
        await consumer.receive(1)

        clock.advance(10)
        assert await consumer.receive(1) == []
        clock.advance(5)
        [again] = await consumer.receive(1)
        assert again.delivery_count == 2


# -- dead letters -------------------------------------------------------------------------


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


async def test_max_deliveries_dead_letters(data_dir: Path, clock: FakeClock) -> None:
    async with logq.open(data_dir, clock=clock) as log:
        await log.configure_group("g", max_deliveries=3, lease_timeout=10)
        await log.send("t", "job", key="k", headers={"trace": "abc"}, priority=4)
        consumer = log.consumer("t", group="g", auto_ack=False)

        # Fail three ways: a nack, an expired lease, then a nack again.
        [message] = await consumer.receive(1)
        await message.nack()
        clock.advance(5)
        await consumer.receive(1)
        clock.advance(11)
        [message] = await consumer.receive(1)
        assert message.delivery_count == 3
        clock.advance(1)
        await message.nack()
        assert await consumer.receive(1) == []

        assert "t.g.dlq" in log.list_topics()
        [letter] = await replay_messages(log, "t.g.dlq")
        headers = letter.headers
        assert letter.value == "job"
        assert letter.key == b"k"
        assert letter.priority == 4
        assert headers["trace"] == "abc"
        assert headers["logq.dlq.topic"] == "t"
        assert headers["logq.dlq.partition"] == "0"
        assert headers["logq.dlq.offset"] == "0"
        assert headers["logq.dlq.group"] == "g"
        assert "max deliveries (3)" in headers["logq.dlq.reason"]
        assert headers["logq.dlq.delivery_count"] == "3"
        assert parse_time(headers["logq.dlq.first_failure"]) == START_TIME
        assert parse_time(headers["logq.dlq.last_failure"]) == START_TIME + 17

        [row] = await log.describe_group("g")
        assert row.committed_offset == 1
        assert row.dead_lettered == 1


async def test_dead_letter_is_per_group(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.send("t", "job")
        failing = log.consumer("t", group="g", auto_ack=False)
        [message] = await failing.receive(1)
        await message.reject("bad payload")

        other = log.consumer("t", group="other", auto_ack=False)
        [same] = await other.receive(1)
        assert same.offset == message.offset
        assert same.delivery_count == 1


async def test_reject_dead_letters_at_once(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.configure_group("g", max_deliveries=5)
        await log.send("t", "job")
        consumer = log.consumer("t", group="g", auto_ack=False)
        [message] = await consumer.receive(1)

        await message.reject(reason="bad payload")
        assert await consumer.receive(1) == []
        [letter] = await log.dead_letters("t", group="g")
        assert letter.delivery_count == 1
        assert "bad payload" in letter.reason


async def test_dead_letter_topic_setting(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.configure_group("g", dead_letter_topic="failed-jobs")
        await log.send("t", "job")
        consumer = log.consumer("t", group="g", auto_ack=False)
        [message] = await consumer.receive(1)
        await message.reject()

        assert "failed-jobs" in log.list_topics()
        assert "t.g.dlq" not in log.list_topics()
        [letter] = await log.dead_letters("t", group="g")
        assert letter.dlq_topic == "failed-jobs"
        assert letter.message.value == "job"


async def test_dead_letters_lists_letters(data_dir: Path, clock: FakeClock) -> None:
    async with logq.open(data_dir, clock=clock) as log:
        await log.configure_group("g", max_deliveries=2)
        await log.send_batch("t", ["keep", "retry", "drop"])
        consumer = log.consumer("t", group="g", auto_ack=False)
        keep, retry, drop = await consumer.receive(3)
        await keep.ack()
        await drop.reject("malformed")
        await retry.nack()
        [retry] = await consumer.receive(1)
        await retry.nack()

        first, second = await log.dead_letters("t", group="g")
        assert (first.dlq_offset, second.dlq_offset) == (0, 1)
        assert (first.source_offset, second.source_offset) == (2, 1)
        assert (first.message.value, second.message.value) == ("drop", "retry")
        assert (first.delivery_count, second.delivery_count) == (1, 2)
        assert "malformed" in first.reason
        assert "max deliveries (2)" in second.reason
        assert {first.group, second.group} == {"g"}
        assert {first.source_topic, second.source_topic} == {"t"}
        assert {first.source_partition, second.source_partition} == {0}
        assert not first.redriven
        assert not second.redriven


async def test_redrive_only_in_failing_group(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.send_batch("t", ["a", "b"])
        failing = log.consumer("t", group="g", auto_ack=False)
        for message in await failing.receive(2):
            await message.reject("broken")
        other = log.consumer("t", group="other", auto_ack=False)
        await other.ack(await other.receive(2))

        report = await log.redrive("t", group="g")
        assert report.redriven == [0, 1]
        assert report.skipped == {}
        again = await failing.receive(5)
        assert values(again) == ["a", "b"]
        assert [message.delivery_count for message in again] == [1, 1]
        assert await other.receive(5) == []
        assert await committed_offset(log, "other") == 2
        assert log.describe_topic("t").messages == 2

        await failing.ack(again)
        assert await committed_offset(log, "g") == 2
        assert [letter.redriven for letter in await log.dead_letters("t", group="g")] == [True, True]
        repeat = await log.redrive("t", group="g", offsets=[0])
        assert repeat.redriven == []
        assert repeat.skipped == {0: "already redriven"}
        rest = await log.redrive("t", group="g")
        assert rest.redriven == []
        assert rest.skipped == {}


async def test_redrive_after_retention_skips(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.create_topic("t", segment_bytes=4096, retention_bytes=4096)
        await log.send("t", "poison")
        consumer = log.consumer("t", group="g", auto_ack=False)
        [message] = await consumer.receive(1)
        await message.reject("broken")
        for number in range(40):
            await log.send("t", f"filler-{number}-" + "x" * 400)
        assert log.describe_topic("t").partitions[0].log_start_offset > 0

        report = await log.redrive("t", group="g")
        assert report.redriven == []
        assert "retention" in report.skipped[0]
        [letter] = await log.dead_letters("t", group="g")
        assert letter.message.value == "poison"
        assert not letter.redriven


async def test_purge_dead_letters(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.send_batch("t", ["a", "b", "c"])
        consumer = log.consumer("t", group="g", auto_ack=False)
        first, _, third = await consumer.receive(3)
        await first.reject("broken")
        await third.reject("broken")

        assert await log.purge_dead_letters("t", group="g") == 2
        assert "t.g.dlq" not in log.list_topics()
        assert await log.dead_letters("t", group="g") == []
        assert await log.purge_dead_letters("t", group="g") == 0
        assert log.describe_topic("t").messages == 3


async def test_groups_fail_independently(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.send("t", "job")
        acking = log.consumer("t", group="a", auto_ack=False)
        rejecting = log.consumer("t", group="b", auto_ack=False)
        [for_a] = await acking.receive(1)
        [for_b] = await rejecting.receive(1)
        await for_a.ack()
        await for_b.reject("cannot handle")

        [row_a] = await log.describe_group("a")
        [row_b] = await log.describe_group("b")
        assert row_a.committed_offset == 1
        assert row_b.committed_offset == 1
        assert row_a.dead_lettered == 0
        assert row_b.dead_lettered == 1
        assert await log.dead_letters("t", group="a") == []
        assert [letter.message.value for letter in await log.dead_letters("t", group="b")] == ["job"]


# -- priorities ---------------------------------------------------------------------------

PRIORITY_SENDS = [("low-1", 0), ("p5-a", 5), ("p2-a", 2), ("p5-b", 5), ("low-2", 0), ("p9", 9), ("p2-b", 2)]
PRIORITY_ORDER = ["p9", "p5-a", "p5-b", "p2-a", "p2-b", "low-1", "low-2"]


@pytest.mark.parametrize("batch_size", [1, 10], ids=["one-at-a-time", "one-batch"])
async def test_priority_order(data_dir: Path, batch_size: int) -> None:
    async with logq.open(data_dir) as log:
        for value, priority in PRIORITY_SENDS:
            await log.send("t", value, priority=priority)
        consumer = log.consumer("t", group="g", auto_ack=False)

        received: list[logq.Message] = []
        while batch := await consumer.receive(batch_size):
            received.extend(batch)
        assert values(received) == PRIORITY_ORDER


async def test_priority_across_partitions(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.create_topic("t", partitions=3)
        sends = [(0, 0), (1, 0), (2, 0), (0, 3), (2, 9), (1, 3), (0, 9), (2, 3), (1, 0)]
        for number, (partition, priority) in enumerate(sends):
            await log.send("t", number, partition=partition, priority=priority)
        consumer = log.consumer("t", group="g", auto_ack=False)

        received: list[logq.Message] = []
        while batch := await consumer.receive(1):
            received.extend(batch)
        priorities = [message.priority for message in received]
        assert priorities == sorted(priorities, reverse=True)
        for partition in range(3):
            for priority in (0, 3, 9):
                offsets = [m.offset for m in received if m.partition == partition and m.priority == priority]
                assert offsets == sorted(offsets), f"partition {partition}, priority {priority}"


@pytest.mark.parametrize("limit", [1, 2, 3])
async def test_starvation_limit_delivers_oldest(data_dir: Path, limit: int) -> None:
    async with logq.open(data_dir) as log:
        await log.configure_group("g", starvation_limit=limit)
        await log.send("t", "old")
        urgent = [f"urgent-{number}" for number in range(5)]
        for value in urgent:
            await log.send("t", value, priority=5)
        consumer = log.consumer("t", group="g", auto_ack=False)

        received = [message for _ in range(6) for message in await consumer.receive(1)]
        assert values(received) == urgent[:limit] + ["old"] + urgent[limit:]


async def send_priority_mix(log: logq.Log, partitions: int) -> None:
    """Send PRIORITY_SENDS keyed by level, with each level kept in one partition.

    Ties between partitions then never decide the order, and under key
    ordering the second message of a level waits for the first.
    """
    await log.create_topic("t", partitions=partitions)
    for value, priority in PRIORITY_SENDS:
        await log.send("t", value, priority=priority, key=f"level-{priority}", partition=priority % partitions)


PEEK_CASES = {
    "one-partition": (1, {}),
    "three-partitions": (3, {}),
    "starvation-limit": (1, {"starvation_limit": 2}),
    "key-ordering": (1, {"key_ordering": True}),
}


@pytest.mark.parametrize(
    ("partitions", "settings", "expire"),
    [(*case, False) for case in PEEK_CASES.values()] + [(1, {}, True)],
    ids=[*PEEK_CASES, "expired-lease"],
)
async def test_peek_matches_receive(
    data_dir: Path, clock: FakeClock, partitions: int, settings: dict[str, Any], expire: bool
) -> None:
    async with logq.open(data_dir, clock=clock) as log:
        await log.configure_group("g", lease_timeout=10, **settings)
        await send_priority_mix(log, partitions)
        consumer = log.consumer("t", group="g", auto_ack=False)
        [first] = await consumer.receive(1)
        if expire:
            clock.advance(11)
        else:
            await first.nack()

        peeked = await consumer.peek(4)
        for message in peeked:
            delivered_before = (message.partition, message.offset) == (first.partition, first.offset)
            assert message.delivery_count == int(delivered_before), message.value
        received = await consumer.receive(4)
        assert values(peeked) == values(received)


@pytest.mark.parametrize("partitions", [1, 3])
async def test_bulk_receive_matches_peek(data_dir: Path, partitions: int) -> None:
    # Receives of default-priority runs take the bulk path of selection.py, and peek
    # always takes the general one, so equal orders show the two choose alike.
    async with logq.open(data_dir) as log:
        await log.create_topic("t", partitions=partitions)
        for batch in range(6):
            await log.send_batch("t", [f"b{batch}-{n}" for n in range(40)])
            if batch % 2:
                await log.send("t", f"urgent-{batch}", priority=4)
        consumer = log.consumer("t", group="g", auto_ack=False)
        first = await consumer.receive(5)  # the 3 urgent messages, then 2 of priority 0
        await first[4].nack()
        between = await consumer.receive(1)

        peeked = await consumer.peek(300)
        received = await consumer.receive(300)
        assert values(received) == values(peeked)
        delivered = [*first, *between, *received]
        assert len(delivered) == 6 * 40 + 3 + 1
        assert sorted(set(values(delivered))) == sorted(values(delivered[:4] + delivered[5:]))
        assert [m.delivery_count for m in delivered if m.value == first[4].value] == [1, 2]
        assert await consumer.receive(300, timeout=0) == []


async def test_reopen_reads_no_priority_zero_again(data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The priority index checkpoint covers priority-0 appends too, so a clean reopen
    # does not decode the log again to look for urgent messages.
    async with logq.open(data_dir) as log:
        await log.send("t", "urgent", priority=3)
        await log.send_batch("t", [b"x"] * 5000)
    with caplog.at_level(logging.INFO, logger="logq.consumers.priority_index"):
        async with logq.open(data_dir) as log:
            [message] = await log.consumer("t", group="g").receive(1)
            assert message.value == "urgent"
    opened = [record.getMessage() for record in caplog.records if "complete below offset" in record.getMessage()]
    assert opened and opened[0].endswith("complete below offset 5001")
    assert not [record for record in caplog.records if "caught up" in record.getMessage()]


async def test_receive_after_exhaustion_sees_changes(data_dir: Path, clock: FakeClock) -> None:
    # A receive that found nothing left may skip the next look only while nothing changed.
    async with logq.open(data_dir, clock=clock) as log:
        await log.configure_group("g", lease_timeout=10)
        await log.send_batch("t", ["a", "b"])
        consumer = log.consumer("t", group="g", auto_ack=False)
        a, b = await consumer.receive(5)
        assert await consumer.receive(5, timeout=0) == []

        await b.nack()
        assert values(await consumer.receive(5, timeout=0)) == ["b"]
        assert await consumer.receive(5, timeout=0) == []

        clock.advance(11)  # both leases expire without any event or append
        assert sorted(values(await consumer.receive(5, timeout=0))) == ["a", "b"]
        await consumer.ack_batch([a, b])
        assert await consumer.receive(5, timeout=0) == []

        await log.reset_group("g", "t", to="earliest")
        assert values(await consumer.receive(5, timeout=0)) == ["a", "b"]


async def test_bulk_receive_stops_at_leased_urgent(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.send_batch("t", ["a", "b"])
        await log.send("t", "urgent", priority=7)
        await log.send_batch("t", ["c", "d"])
        consumer = log.consumer("t", group="g", auto_ack=False)
        [urgent] = await consumer.receive(1)
        assert urgent.value == "urgent"

        received = await consumer.receive(10)
        assert values(received) == ["a", "b", "c", "d"]
        assert [m.offset for m in received] == [0, 1, 3, 4]


@pytest.mark.parametrize(("partitions", "settings"), list(PEEK_CASES.values()), ids=list(PEEK_CASES))
async def test_peek_changes_nothing(data_dir: Path, partitions: int, settings: dict[str, Any]) -> None:
    async with logq.open(data_dir) as log:
        await log.configure_group("g", **settings)
        await send_priority_mix(log, partitions)
        consumer = log.consumer("t", group="g", auto_ack=False)
        [first] = await consumer.receive(1)
        await first.nack()
        before = await log.describe_group("g")

        peeked = values(await log.peek("t", group="g", max_messages=3))
        assert values(await log.peek("t", group="g", max_messages=3)) == peeked
        assert values(await consumer.peek(1)) == peeked[:1]
        assert await log.describe_group("g") == before
        assert values(await consumer.receive(3)) == peeked


# -- blocking receive ---------------------------------------------------------------------


async def test_blocking_receive_wakes_on_send(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.create_topic("t")
        consumer = log.consumer("t", group="g", auto_ack=False)
        waiting = asyncio.create_task(consumer.receive(1, timeout=10))
        await yield_to_tasks()
        assert not waiting.done()

        started = time.monotonic()
        await log.send("t", "job")
        [message] = await asyncio.wait_for(waiting, 5)
        assert message.value == "job"
        assert time.monotonic() - started < 1.0


async def test_blocking_receive_wakes_on_expiry(data_dir: Path) -> None:
    # The real clock: a lease of 0.2 s must wake a receive that waits for up to 5 s.
    async with logq.open(data_dir) as log:
        await log.send("t", "job")
        first = log.consumer("t", group="g", auto_ack=False)
        second = log.consumer("t", group="g", auto_ack=False)
        await first.receive(1, lease=0.2)

        started = time.monotonic()
        [message] = await second.receive(1, timeout=5)
        elapsed = time.monotonic() - started
        assert message.delivery_count == 2
        assert 0.15 <= elapsed < 2.0


async def test_blocking_receive_wakes_on_later_expiry(data_dir: Path) -> None:
    # The timer first armed for the short lease must be moved on to the longer one
    # once the short one is acked.
    async with logq.open(data_dir) as log:
        await log.send_batch("t", ["short", "long"])
        first = log.consumer("t", group="g", auto_ack=False)
        [short] = await first.receive(1, lease=0.2)
        [long] = await first.receive(1, lease=0.6)
        await short.ack()
        second = log.consumer("t", group="g", auto_ack=False)

        started = time.monotonic()
        [message] = await second.receive(1, timeout=5)
        elapsed = time.monotonic() - started
        assert message.value == "long"
        assert message.delivery_count == 2
        assert 0.4 <= elapsed < 2.0


async def test_wait_for_append_sees_earlier_notify(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.create_topic("t")
        seen = log._topics["t"].notify_count
        await log.send("t", "job")

        started = time.monotonic()
        assert await log._topics["t"].wait_for_append(5, since=seen) is True
        assert time.monotonic() - started < 0.5
        assert await log._topics["t"].wait_for_append(0.05) is False


async def make_ready_by_nack(consumer: logq.Consumer, message: logq.Message) -> None:
    await message.nack()


async def make_ready_by_close(consumer: logq.Consumer, message: logq.Message) -> None:
    await consumer.close()


async def make_ready_by_ack(consumer: logq.Consumer, message: logq.Message) -> None:
    # Under key ordering, acking the first message of a key releases the second.
    await message.ack()


@pytest.mark.parametrize(
    "make_ready", [make_ready_by_nack, make_ready_by_close, make_ready_by_ack], ids=["nack", "close", "ack-frees-key"]
)
async def test_blocking_receive_wakes_on_ready(
    data_dir: Path, make_ready: Callable[[logq.Consumer, logq.Message], Awaitable[None]]
) -> None:
    async with logq.open(data_dir) as log:
        await log.configure_group("g", key_ordering=True)
        await log.send_batch("t", ["first", "second"], key="k")
        holder = log.consumer("t", group="g", auto_ack=False)
        waiter = log.consumer("t", group="g", auto_ack=False)
        [message] = await holder.receive(1)
        waiting = asyncio.create_task(waiter.receive(1, timeout=3))
        await yield_to_tasks()
        assert not waiting.done()

        started = time.monotonic()
        await make_ready(holder, message)
        received = await asyncio.wait_for(waiting, 5)
        assert len(received) == 1
        assert time.monotonic() - started < 1.0


async def test_nonblocking_receive_returns_at_once(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.create_topic("t")
        consumer = log.consumer("t", group="g", auto_ack=False)
        started = time.monotonic()
        assert await consumer.receive(10, timeout=0) == []

        await log.send("t", "job")
        await log.consumer("t", group="g", auto_ack=False).receive(1)
        assert await consumer.receive(10, timeout=0) == []
        assert time.monotonic() - started < 0.5


# -- per-key ordering ---------------------------------------------------------------------


async def test_key_ordering_holds_later_messages(data_dir: Path, clock: FakeClock) -> None:
    async with logq.open(data_dir, clock=clock) as log:
        await log.configure_group("g", key_ordering=True, lease_timeout=10)
        for value, key in [("a1", "a"), ("a2", "a"), ("b1", "b"), ("a3", "a"), ("b2", "b"), ("n1", None)]:
            await log.send("t", value, key=key)
        consumer = log.consumer("t", group="g", auto_ack=False)

        a1, b1, n1 = await consumer.receive(10)
        assert values([a1, b1, n1]) == ["a1", "b1", "n1"]
        [row] = await log.describe_group("g")
        assert row.held == 3
        await n1.ack()

        await a1.ack()
        [a2] = await consumer.receive(10)
        assert a2.value == "a2"

        await b1.nack(delay=5)
        assert await consumer.receive(10) == []
        clock.advance(6)
        [b1_again] = await consumer.receive(10)
        assert b1_again.value == "b1"
        assert b1_again.delivery_count == 2

        clock.advance(5)
        redelivered = await consumer.receive(10)
        assert values(redelivered) == ["a2"]
        assert redelivered[0].delivery_count == 2

        await consumer.ack([b1_again, *redelivered])
        assert sorted(values(await consumer.receive(10))) == ["a3", "b2"]


def read_openssh_lines() -> list[tuple[str, bytes]]:
    """Return (sshd PID, raw line) for each line of the OpenSSH sample."""
    lines = []
    for line in OPENSSH_LOG.read_bytes().splitlines():
        match = re.search(rb"sshd\[(\d+)\]", line)
        assert match is not None, line
        lines.append((match.group(1).decode(), line))
    return lines


async def process_in_key_order(
    consumer: logq.Consumer, total: int, acked: dict[str, list[int]], nacked: list[int]
) -> None:
    """Ack messages, nacking about a quarter of them once, until `total` messages are acked."""
    idle_polls = 0
    while sum(len(offsets) for offsets in acked.values()) < total:
        batch = await consumer.receive(10)
        if not batch:
            idle_polls += 1
            assert idle_polls < 10_000, "no message became ready"
            await asyncio.sleep(0)
            continue
        idle_polls = 0
        await asyncio.sleep(0)
        for message in batch:
            if message.delivery_count == 1 and zlib.crc32(message.raw_value) % 4 == 0:
                nacked.append(message.offset)
                await message.nack()
            else:
                assert message.key is not None
                acked[message.key.decode()].append(message.offset)
                await message.ack()


@pytest.mark.skipif(not OPENSSH_LOG.exists(), reason=f"log sample {OPENSSH_LOG} is missing")
async def test_key_order_survives_retries(data_dir: Path) -> None:
    lines = read_openssh_lines()
    async with logq.open(data_dir) as log:
        await log.configure_group("g", key_ordering=True, max_deliveries=0)
        for pid, line in lines:
            await log.send("ssh", line, key=pid)
        acked: dict[str, list[int]] = defaultdict(list)
        nacked: list[int] = []
        workers = [log.consumer("ssh", group="g", auto_ack=False) for _ in range(3)]
        await asyncio.gather(*(process_in_key_order(worker, len(lines), acked, nacked) for worker in workers))

        assert len(acked) == 519
        assert sum(len(offsets) for offsets in acked.values()) == 2_000
        assert len(nacked) > 100
        for pid, offsets in acked.items():
            assert offsets == sorted(offsets), f"key {pid} acked out of order"
        assert await committed_offset(log, "g") == 2_000


# -- restart ------------------------------------------------------------------------------


async def test_state_survives_reopen(data_dir: Path, clock: FakeClock) -> None:
    async with logq.open(data_dir, clock=clock) as log:
        await log.configure_group("g", max_deliveries=3, lease_timeout=10)
        await log.send_batch("t", ["acked", "nacked", "rejected", "leased", "delayed"])
        consumer = log.consumer("t", group="g", auto_ack=False)
        acked, nacked, rejected, _, delayed = await consumer.receive(5)
        await acked.ack()
        await nacked.nack()
        [nacked] = await consumer.receive(1)
        await nacked.nack()
        await rejected.reject("broken")
        await delayed.nack(delay=100)

    async with logq.open(data_dir, clock=clock) as log:
        assert (await log.group_config("g")).max_deliveries == 3
        [row] = await log.describe_group("g")
        assert row.committed_offset == 1
        assert row.dead_lettered == 1
        assert [letter.message.value for letter in await log.dead_letters("t", group="g")] == ["rejected"]

        consumer = log.consumer("t", group="g", auto_ack=False)
        again = await consumer.receive(10)
        counts = {message.value: message.delivery_count for message in again}
        assert counts == {"nacked": 3, "leased": 2}
        await consumer.ack(again)
        clock.advance(100)
        [late] = await consumer.receive(10)
        assert late.value == "delayed"
        assert late.delivery_count == 2


async def test_key_hold_survives_reopen(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.configure_group("g", key_ordering=True)
        await log.send_batch("t", ["k1", "k2", "k3"], key="k")
        consumer = log.consumer("t", group="g", auto_ack=False)
        assert values(await consumer.receive(10)) == ["k1"]

    async with logq.open(data_dir) as log:
        consumer = log.consumer("t", group="g", auto_ack=False)
        [message] = await consumer.receive(10)
        assert message.value == "k1"
        assert message.delivery_count == 2
        await message.ack()
        assert values(await consumer.receive(10)) == ["k2"]


# -- bad input ----------------------------------------------------------------------------


class Scene(NamedTuple):
    log: logq.Log
    consumer: logq.Consumer
    message: logq.Message


BAD_INPUT = [
    ("lease-zero", lambda scene: scene.consumer.receive(1, lease=0), logq.InvalidArgumentError, "got 0"),
    ("lease-negative", lambda scene: scene.consumer.receive(1, lease=-1), logq.InvalidArgumentError, "got -1"),
    ("lease-text", lambda scene: scene.consumer.receive(1, lease="x"), logq.InvalidArgumentError, "got 'x'"),
    ("nack-delay-negative", lambda scene: scene.message.nack(delay=-1), logq.InvalidArgumentError, "got -1"),
    ("extend-negative", lambda scene: scene.message.extend(seconds=-1), logq.InvalidArgumentError, "got -1"),
    ("reject-empty-reason", lambda scene: scene.message.reject(reason=""), logq.InvalidArgumentError, "got ''"),
    ("lease-timeout-zero", lambda scene: scene.log.configure_group("g", lease_timeout=0),
     logq.InvalidConfigError, "lease_timeout=0"),
    ("max-deliveries-negative", lambda scene: scene.log.configure_group("g", max_deliveries=-1),
     logq.InvalidConfigError, "max_deliveries=-1"),
    ("backoff-below-one", lambda scene: scene.log.configure_group("g", retry_backoff=0.5),
     logq.InvalidConfigError, "retry_backoff=0.5"),
    ("starvation-limit-zero", lambda scene: scene.log.configure_group("g", starvation_limit=0),
     logq.InvalidConfigError, "starvation_limit=0"),
    ("unknown-setting", lambda scene: scene.log.configure_group("g", unknown_setting=1),
     logq.InvalidConfigError, "unknown_setting"),
    ("dead-letter-topic-path", lambda scene: scene.log.configure_group("g", dead_letter_topic="../x"),
     logq.InvalidNameError, "'../x'"),
    ("peek-zero", lambda scene: scene.log.peek("t", group="g", max_messages=0), logq.InvalidArgumentError, "got 0"),
    ("redrive-unknown-group", lambda scene: scene.log.redrive("t", group="ghost"), logq.UnknownGroupError, "'ghost'"),
    ("dead-letters-unknown-topic", lambda scene: scene.log.dead_letters("missing", group="g"),
     logq.UnknownTopicError, "'missing'"),
]


@pytest.mark.parametrize(
    ("call", "error", "fragment"), [case[1:] for case in BAD_INPUT], ids=[case[0] for case in BAD_INPUT]
)
async def test_bad_input_raises(
    data_dir: Path, call: Callable[[Scene], Awaitable[object]], error: type[Exception], fragment: str
) -> None:
    async with logq.open(data_dir) as log:
        config = await log.configure_group("g", max_deliveries=4)
        await log.send_batch("t", ["a", "b", "c"])
        consumer = log.consumer("t", group="g", auto_ack=False)
        [message] = await consumer.receive(1)

        with pytest.raises(error, match=re.escape(fragment)):
            await call(Scene(log, consumer, message))

        assert log.list_topics() == ["t"]
        assert log.list_groups() == ["g"]
        assert log.describe_topic("t").messages == 3
        assert await log.group_config("g") == config
        assert await consumer.ack(message) == 1
        assert values(await consumer.receive(5)) == ["b", "c"]
