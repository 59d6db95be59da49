"""Workloads that bench.throughput times: logq sends and consumes, and the plain-file baselines.

Each scenario coroutine takes a fresh data directory and the settings, does
its untimed setup (creating and filling the topic), and returns one timed
Sample. The consume scenarios also return what the delivery order check
found, which runs after the timed part.
"""

from __future__ import annotations

import gc
import os
import random
import struct
import time
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import logq

TOPIC = "bench"
GROUP = "bench"

# Share of each priority above 0 in the priority fill. Priority 0, the
# default, gets the remaining messages (70%).
PRIORITY_SHARES = ((9, 0.10), (5, 0.20))

# Length prefix of a plain-file baseline record: 4 bytes, little-endian.
LENGTH_PREFIX = struct.Struct("<I")

# Ack pattern of a consume scenario. "auto" is auto_ack=True, "each" calls
# `ack(message)` once per message, and "batch" calls `ack_batch(messages)` once per receive.
AckMode = Literal["auto", "each", "batch"]


@dataclass(frozen=True, slots=True)
class Settings:
    """Workload of one benchmark invocation, from the command line."""

    messages: int
    per_call_messages: int
    receive_one_messages: int
    value_bytes: int
    batch_size: int
    fsync: str
    seed: int
    runs: int


@dataclass(frozen=True, slots=True)
class Sample:
    """One timed run: messages moved, wall-clock seconds, CPU seconds and order check findings.

    `order_errors` is empty when the delivery order check passed or the
    scenario does not consume. `server_cpu_seconds` is the CPU time of a
    separate server process during the run, for bench.compare peers that
    have one, and None otherwise.
    """

    messages: int
    wall_seconds: float
    cpu_seconds: float
    order_errors: tuple[str, ...] = ()
    server_cpu_seconds: float | None = None

    @property
    def rate(self) -> float:
        """Messages per wall-clock second."""
        return self.messages / self.wall_seconds


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named workload, the row its ratio is taken against, and the coroutine that times one run."""

    name: str
    baseline: str | None
    run: Callable[[Path, Settings], Awaitable[Sample]]
    consumes: bool = False


class Stopwatch:
    """Wall-clock and process CPU time of a `with` block, started after a garbage collection."""

    def __enter__(self) -> Stopwatch:
        gc.collect()
        self._wall_start = time.perf_counter()
        self._cpu_start = time.process_time()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.wall_seconds = time.perf_counter() - self._wall_start
        self.cpu_seconds = time.process_time() - self._cpu_start

    def sample(self, messages: int, order_errors: tuple[str, ...] = ()) -> Sample:
        """Return the measured times as a Sample of `messages` messages."""
        return Sample(messages, self.wall_seconds, self.cpu_seconds, order_errors)


def make_value(size: int) -> bytes:
    """Return `size` random bytes, so that no layer can profit from repeated content."""
    return os.urandom(size)


# -- produce scenarios --------------------------------------------------------------


async def produce_per_call(directory: Path, settings: Settings) -> Sample:
    """Time one `await log.send()` per message."""
    value = make_value(settings.value_bytes)
    count = settings.per_call_messages
    async with logq.open(directory) as log:
        await log.create_topic(TOPIC, fsync=settings.fsync)
        with Stopwatch() as watch:
            for _ in range(count):
                await log.send(TOPIC, value)
    return watch.sample(count)


async def produce_batched(directory: Path, settings: Settings) -> Sample:
    """Time `await log.send_batch()` with `batch_size` values per call."""
    value = make_value(settings.value_bytes)
    async with logq.open(directory) as log:
        await log.create_topic(TOPIC, fsync=settings.fsync)
        with Stopwatch() as watch:
            await send_all_batched(log, value, settings.messages, settings.batch_size)
    return watch.sample(settings.messages)


async def send_all_batched(log: logq.Log, value: bytes, count: int, batch_size: int) -> None:
    """Send `count` copies of `value` in calls of `batch_size` values."""
    remaining = count
    while remaining > 0:
        size = min(batch_size, remaining)
        await log.send_batch(TOPIC, [value] * size)
        remaining -= size


# -- fills of the consume scenarios (not timed) -----------------------------------------

# A fill sends `count` copies of a value and returns the priority of each offset.
Fill = Callable[[logq.Log, bytes, int, Settings], Awaitable[list[int]]]


async def fill_batched(log: logq.Log, value: bytes, count: int, settings: Settings) -> list[int]:
    """Send `count` messages of priority 0 in `send_batch` calls of `batch_size` values."""
    await send_all_batched(log, value, count, settings.batch_size)
    return [0] * count


def describe_priority_mix() -> str:
    """Return the priority fill's shares as text, such as "10% priority 9, 20% priority 5, 70% priority 0"."""
    parts = [f"{share:.0%} priority {priority}" for priority, share in PRIORITY_SHARES]
    parts.append(f"{1 - sum(share for _, share in PRIORITY_SHARES):.0%} priority 0")
    return ", ".join(parts)


def make_priorities(count: int, seed: int) -> list[int]:
    """Return `count` priorities in the PRIORITY_SHARES mix, shuffled by a generator seeded with `seed`."""
    priorities: list[int] = []
    for priority, share in PRIORITY_SHARES:
        priorities.extend([priority] * round(count * share))
    priorities.extend([0] * (count - len(priorities)))
    random.Random(seed).shuffle(priorities)
    return priorities


async def send_in_runs(log: logq.Log, value: bytes, priorities: list[int], batch_size: int, *,
                       keep_priorities: bool) -> None:
    """Send one message per entry of `priorities`, one `send_batch` call per run of equal priorities.

    `send_batch` takes one priority for all its values, so a shuffled mix
    needs one call, and one record batch, per run. Runs are cut at
    `batch_size`. With `keep_priorities` false every message gets priority
    0, while the calls and record batches stay the same.
    """
    start = 0
    while start < len(priorities):
        priority = priorities[start]
        end = start + 1
        while end < len(priorities) and priorities[end] == priority and end - start < batch_size:
            end += 1
        await log.send_batch(TOPIC, [value] * (end - start), priority=priority if keep_priorities else 0)
        start = end


async def fill_priorities(log: logq.Log, value: bytes, count: int, settings: Settings) -> list[int]:
    """Send `count` messages of mixed priorities (see `make_priorities`) in runs of equal priority."""
    priorities = make_priorities(count, settings.seed)
    await send_in_runs(log, value, priorities, settings.batch_size, keep_priorities=True)
    return priorities


async def fill_priority_zero_runs(log: logq.Log, value: bytes, count: int, settings: Settings) -> list[int]:
    """Send the calls of `fill_priorities` with priority 0, so that only the priorities differ."""
    priorities = make_priorities(count, settings.seed)
    await send_in_runs(log, value, priorities, settings.batch_size, keep_priorities=False)
    return [0] * count


# -- consume scenarios ------------------------------------------------------------------


async def consume_auto_ack(directory: Path, settings: Settings) -> Sample:
    """Time `receive(batch_size, timeout=0)` with auto-ack over a topic filled in full batches."""
    return await consume(directory, settings, fill_batched, count=settings.messages,
                         receive_size=settings.batch_size, ack_mode="auto")


async def consume_batch_ack(directory: Path, settings: Settings) -> Sample:
    """Time `receive(batch_size)` and `ack_batch` over a topic filled in full batches."""
    return await consume(directory, settings, fill_batched, count=settings.messages,
                         receive_size=settings.batch_size, ack_mode="batch")


async def consume_one_ack_each(directory: Path, settings: Settings) -> Sample:
    """Time `receive(1)` and `ack(message)` per message over a topic filled in full batches."""
    return await consume(directory, settings, fill_batched, count=settings.receive_one_messages,
                         receive_size=1, ack_mode="each")


async def consume_priorities_batch_ack(directory: Path, settings: Settings) -> Sample:
    """Time `receive(batch_size)` and `ack_batch` over a topic of mixed priorities."""
    return await consume(directory, settings, fill_priorities, count=settings.messages,
                         receive_size=settings.batch_size, ack_mode="batch")


async def consume_priority_zero_runs_batch_ack(directory: Path, settings: Settings) -> Sample:
    """Time `receive(batch_size)` and `ack_batch` over the record batches of the priority fill, all priority 0."""
    return await consume(directory, settings, fill_priority_zero_runs, count=settings.messages,
                         receive_size=settings.batch_size, ack_mode="batch")


async def consume_priorities_one_ack_each(directory: Path, settings: Settings) -> Sample:
    """Time `receive(1)` and `ack(message)` per message over a topic of mixed priorities."""
    return await consume(directory, settings, fill_priorities, count=settings.receive_one_messages,
                         receive_size=1, ack_mode="each")


async def consume(directory: Path, settings: Settings, fill: Fill, *, count: int, receive_size: int,
                  ack_mode: AckMode) -> Sample:
    """Fill a topic with `count` messages, time one consumer reading all of them, then check the order.

    The timed part covers joining the group, every receive and ack, and the
    consumer's close, which acks the last batch under auto-ack.
    """
    value = make_value(settings.value_bytes)
    async with logq.open(directory) as log:
        await log.create_topic(TOPIC, fsync=settings.fsync)
        sent_priorities = await fill(log, value, count, settings)
        consumer = log.consumer(TOPIC, group=GROUP, auto_ack=ack_mode == "auto")
        deliveries = Deliveries()
        with Stopwatch() as watch:
            await receive_all(consumer, count, receive_size, ack_mode, deliveries)
            await consumer.close()
    return watch.sample(count, check_delivery_order(deliveries, sent_priorities))


@dataclass(slots=True)
class Deliveries:
    """Offset and priority of every delivered message in delivery order, and the size of each receive."""

    offsets: array = field(default_factory=lambda: array("q"))
    priorities: array = field(default_factory=lambda: array("H"))
    batch_sizes: array = field(default_factory=lambda: array("q"))

    def add(self, batch: list[logq.Message]) -> None:
        """Record one receive's messages."""
        for message in batch:
            self.offsets.append(message.offset)
            self.priorities.append(message.priority)
        self.batch_sizes.append(len(batch))


async def receive_all(consumer: logq.Consumer, count: int, receive_size: int, ack_mode: AckMode,
                      deliveries: Deliveries) -> None:
    """Receive and ack until `count` messages arrived, recording each in `deliveries`.

    Raises RuntimeError when a non-blocking receive returns nothing before
    then. The topic was filled before the consumer started, so that is a bug.
    """
    received = 0
    while received < count:
        batch = await consumer.receive(receive_size, timeout=0)
        if not batch:
            raise RuntimeError(
                f"receive returned no messages after {received} of {count}, "
                "although the topic was filled beforehand; report this as a logq bug"
            )
        deliveries.add(batch)
        if ack_mode == "each":
            for message in batch:
                await consumer.ack(message)
        elif ack_mode == "batch":
            await consumer.ack_batch(batch)
        received += len(batch)


def check_delivery_order(deliveries: Deliveries, sent_priorities: list[int]) -> tuple[str, ...]:
    """Return a description of every way the deliveries break priority-then-offset order.

    The topic has one partition, it is filled before the consumer starts, and
    no message is nacked or expires. So the check expects each message exactly
    once, with the priority it was sent with, and each delivery after all
    messages of higher priority and after the lower offsets of its own priority.
    Breaks inside one receive and between two receives are counted apart,
    because the first is wrong for any number of consumers.
    """
    errors: list[str] = []
    offsets, priorities = deliveries.offsets, deliveries.priorities
    if len(set(offsets)) != len(offsets):
        errors.append(f"{len(offsets) - len(set(offsets))} offsets were delivered more than once")
    missing = len(sent_priorities) - len(set(offsets))
    if missing > 0:
        errors.append(f"{missing} of {len(sent_priorities)} sent messages were never delivered")
    wrong = [o for o, p in zip(offsets, priorities) if not 0 <= o < len(sent_priorities) or sent_priorities[o] != p]
    if wrong:
        errors.append(f"{len(wrong)} messages arrived with a priority they were not sent with, first at offset {wrong[0]}")

    within, between = [], []
    position = 0
    for size in deliveries.batch_sizes:
        for index in range(max(position, 1), position + size):
            earlier = (-priorities[index - 1], offsets[index - 1])
            later = (-priorities[index], offsets[index])
            if later <= earlier:
                (within if index > position else between).append(index)
        position += size
    for kind, breaks in (("inside one receive", within), ("between two receives", between)):
        if breaks:
            index = breaks[0]
            errors.append(
                f"out of order {kind}: {len(breaks)} deliveries; first: offset {offsets[index]} "
                f"(priority {priorities[index]}) was delivered after offset {offsets[index - 1]} "
                f"(priority {priorities[index - 1]})"
            )
    return tuple(errors)


# -- plain-file baselines -----------------------------------------------------------


async def plain_file(directory: Path, settings: Settings) -> Sample:
    """Time framed records written to one file in `batch_size`-record writes, without fsync."""
    return write_framed_records(directory / "plain.log", settings, fsync=False)


async def plain_file_fsync(directory: Path, settings: Settings) -> Sample:
    """Time framed records written to one file in `batch_size`-record writes, with an fsync after each write."""
    return write_framed_records(directory / "plain.log", settings, fsync=True)


def write_framed_records(path: Path, settings: Settings, *, fsync: bool) -> Sample:
    """Write `settings.messages` records, each a 4-byte length prefix and the value.

    The records of each write are framed one by one in a Python loop and then
    written with one `write` call, so the baseline includes a per-record
    Python cost as logq does.
    """
    value = make_value(settings.value_bytes)
    with path.open("wb") as file, Stopwatch() as watch:
        remaining = settings.messages
        while remaining > 0:
            count = min(settings.batch_size, remaining)
            parts = []
            for _ in range(count):
                parts.append(LENGTH_PREFIX.pack(len(value)))
                parts.append(value)
            file.write(b"".join(parts))
            file.flush()
            if fsync:
                os.fsync(file.fileno())
            remaining -= count
    return watch.sample(settings.messages)


# -- the list of scenarios ------------------------------------------------------------

PLAIN_FILE = "plain file"
PLAIN_FILE_FSYNC = "plain file + fsync per write"


def build_scenarios(settings: Settings) -> list[Scenario]:
    """Return the scenarios in report order, each paired with the row its ratio is taken against.

    Produce rows compare with the baseline of the same durability: the
    fsync-per-write file under fsync="always", the file without fsync
    otherwise. FIFO consume rows never fsync the topic, so they compare with
    the file without fsync. Each priority row compares with the same receive
    and ack pattern without priorities, so its ratio is the cost of priorities.
    """
    produce_baseline = PLAIN_FILE_FSYNC if settings.fsync == "always" else PLAIN_FILE
    batch = settings.batch_size
    batch_ack = f"receive({batch}) + ack_batch"
    one_ack = "receive(1) + ack, per message"
    zero_runs = f"priority 0 in runs: {batch_ack}"
    return [
        Scenario("send, one per call", produce_baseline, produce_per_call),
        Scenario(f"send_batch, {batch} per call", produce_baseline, produce_batched),
        Scenario(f"receive({batch}), auto-ack", PLAIN_FILE, consume_auto_ack, consumes=True),
        Scenario(batch_ack, PLAIN_FILE, consume_batch_ack, consumes=True),
        Scenario(one_ack, PLAIN_FILE, consume_one_ack_each, consumes=True),
        Scenario(zero_runs, batch_ack, consume_priority_zero_runs_batch_ack, consumes=True),
        Scenario(f"priorities: {batch_ack}", zero_runs, consume_priorities_batch_ack, consumes=True),
        Scenario(f"priorities: {one_ack}", one_ack, consume_priorities_one_ack_each, consumes=True),
        Scenario(PLAIN_FILE, None, plain_file),
        Scenario(PLAIN_FILE_FSYNC, None, plain_file_fsync),
    ]
