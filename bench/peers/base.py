"""The interface every peer of bench.compare implements, and the timed loops that drive it.

A peer opens a `QueueClient` on a fresh data directory for one durability
class. The scenarios below call only that client, so logq and every peer run
the same loop with the same message counts and value sizes. The end-to-end
latency scenario, which reports percentiles instead of a rate, is in
bench.latency.
"""

from __future__ import annotations

import asyncio
import inspect
from abc import ABC, abstractmethod
from array import array
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from bench.scenarios import Sample, Stopwatch, make_priorities, make_value

# "interval": the peer syncs to disk in the background or at checkpoints, so a
# power failure may lose the writes since the last sync. "always": every send
# and every ack returns only after its data is on disk.
Durability = Literal["interval", "always"]
DURABILITY_CLASSES: tuple[Durability, ...] = ("interval", "always")


@dataclass(frozen=True, slots=True)
class Workload:
    """Message counts, value size, batch size and latency settings of one bench.compare invocation."""

    messages: int
    per_call_messages: int
    receive_one_messages: int
    value_bytes: int
    batch_size: int
    runs: int
    sqlite_transaction_rows: int
    # Seed of the shuffle that orders the priorities of the priority fill.
    seed: int = 1
    # Send rates of the latency scenario, in messages per second.
    latency_rates: tuple[int, ...] = (1000, 5000)
    # Measured seconds per latency run, after the warm-up.
    latency_seconds: float = 5.0
    # Seconds of sending at the same rate before the measured part; their messages are left out of the stats.
    latency_warmup_seconds: float = 0.5


class QueueClient(ABC):
    """One open queue of a peer: a producer and one consumer on the same data directory.

    `receive` returns the peer's own message objects. `message_ids` maps them
    to integers that identify each message once, so the scenario can check
    that every message arrived exactly once. The ids of one queue increase in
    the order the messages were sent: the latency scenario relies on that to
    map each id back to its send.

    A client may also have a `server_cpu_seconds()` method, plain or async,
    that returns the CPU seconds a server process of the peer has used so far.
    The scenarios read it before and after the timed part when it exists.
    """

    @abstractmethod
    async def send_batch(self, values: list[bytes]) -> None:
        """Append `values` in order and return once they have the durability of the class."""

    @abstractmethod
    async def send(self, value: bytes) -> None:
        """Append one value and return once it has the durability of the class."""

    async def send_batch_priorities(self, values: list[bytes], priorities: list[int]) -> list[int]:
        """Append `values` in order, `values[i]` with priority `priorities[i]`; return their ids.

        A higher priority is more urgent. The ids are those `message_ids`
        returns for the messages once received. Only the clients of a peer
        with `supports_priorities` implement it. The default raises
        NotImplementedError.
        """
        raise NotImplementedError(f"{type(self).__name__} has no message priorities")

    @abstractmethod
    async def receive(self, max_messages: int) -> Sequence[Any]:
        """Claim up to `max_messages` unclaimed messages without waiting; return them."""

    @abstractmethod
    def message_ids(self, messages: Sequence[Any]) -> list[int]:
        """Return the id of each message returned by `receive`."""

    @abstractmethod
    async def ack_batch(self, messages: Sequence[Any]) -> None:
        """Mark `messages` done, so that no consumer receives them again."""

    @abstractmethod
    async def ack(self, message: Any) -> None:
        """Mark one message done."""

    async def receive_wait(self, max_messages: int, timeout: float) -> Sequence[Any]:
        """Claim up to `max_messages` messages, waiting up to `timeout` seconds for the first one.

        Returns an empty sequence when none arrived in time. The latency
        scenario calls it from a consumer task while a producer task sends.
        The default polls `receive` every 100 µs; a peer with a blocking read
        (logq's receive timeout, XREADGROUP BLOCK, a JetStream pull fetch)
        overrides it.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            messages = await self.receive(max_messages)
            if messages or asyncio.get_running_loop().time() >= deadline:
                return messages
            await asyncio.sleep(0.0001)

    async def finish_consuming(self) -> None:
        """Release what the consumer holds; timed as part of the consume scenarios."""

    @abstractmethod
    async def close(self) -> None:
        """Close the queue; not timed."""


class Peer(ABC):
    """A system that bench.compare measures, with the settings of each durability class."""

    name: str

    # False for a peer that bench.compare runs only when --peer names it.
    in_default_run: bool = True

    # True for a peer whose priority queue (`open_priority_queue`) implements
    # `send_batch_priorities`. From a queue filled beforehand, such a peer
    # delivers every message of a higher priority before any of a lower one,
    # and the messages of one priority in the order they were sent.
    supports_priorities: bool = False

    @abstractmethod
    def describe(self, durability: Durability, workload: Workload) -> str:
        """Return the settings that implement `durability`, for the report."""

    @abstractmethod
    async def open(self, directory: Path, durability: Durability, workload: Workload) -> QueueClient:
        """Open a new, empty queue in `directory`."""

    def versions(self) -> dict[str, str]:
        """Return the version of each library or server the peer uses, by name."""
        return {}

    async def open_priority_queue(self, directory: Path, durability: Durability, workload: Workload) -> QueueClient:
        """Open a new, empty queue in `directory` that takes priorities; the default is `open`.

        A peer that keeps prioritized messages apart from plain ones, as the
        sqlite3 peers do, overrides it.
        """
        return await self.open(directory, durability, workload)

    def supports(self, scenario: str) -> bool:
        """Return whether the peer has the operations of `scenario`.

        The priority scenario needs `supports_priorities`; every other
        scenario, including the latency scenario, is supported by default.
        """
        if scenario == CONSUME_PRIORITIES:
            return self.supports_priorities
        return True

    async def run(self, scenario: str, directory: Path, durability: Durability, workload: Workload) -> Sample | None:
        """Time one run of `scenario` in `directory`; return None if the peer has no such operation."""
        return await SCENARIOS[scenario](self, directory, durability, workload)


# -- the timed loops ------------------------------------------------------------------


async def read_server_cpu_seconds(client: QueueClient) -> float | None:
    """Return the client's `server_cpu_seconds()`, awaited if it is a coroutine, or None when it has none."""
    method = getattr(client, "server_cpu_seconds", None)
    if method is None:
        return None
    seconds = method()
    if inspect.isawaitable(seconds):
        seconds = await seconds
    return float(seconds)


def with_server_cpu(sample: Sample, before: float | None, after: float | None) -> Sample:
    """Return `sample` with the server CPU seconds between the two readings, when both exist."""
    if before is None or after is None:
        return sample
    return replace(sample, server_cpu_seconds=after - before)


async def produce_batched(peer: Peer, directory: Path, durability: Durability, workload: Workload) -> Sample:
    """Time `send_batch` calls of `batch_size` values until `messages` values are sent."""
    value = make_value(workload.value_bytes)
    client = await peer.open(directory, durability, workload)
    try:
        server_before = await read_server_cpu_seconds(client)
        with Stopwatch() as watch:
            await send_all(client, value, workload.messages, workload.batch_size)
        server_after = await read_server_cpu_seconds(client)
    finally:
        await client.close()
    return with_server_cpu(watch.sample(workload.messages), server_before, server_after)


async def produce_per_call(peer: Peer, directory: Path, durability: Durability, workload: Workload) -> Sample:
    """Time one `send` call per message for `per_call_messages` messages."""
    value = make_value(workload.value_bytes)
    count = workload.per_call_messages
    client = await peer.open(directory, durability, workload)
    try:
        server_before = await read_server_cpu_seconds(client)
        with Stopwatch() as watch:
            for _ in range(count):
                await client.send(value)
        server_after = await read_server_cpu_seconds(client)
    finally:
        await client.close()
    return with_server_cpu(watch.sample(count), server_before, server_after)


async def consume_batched(peer: Peer, directory: Path, durability: Durability, workload: Workload) -> Sample:
    """Time `receive(batch_size)` and `ack_batch` over a queue filled beforehand with `messages` values."""
    return await consume(peer, directory, durability, workload, workload.messages, workload.batch_size)


async def consume_one_at_a_time(peer: Peer, directory: Path, durability: Durability, workload: Workload) -> Sample:
    """Time `receive(1)` and `ack` per message over a queue filled beforehand with `receive_one_messages` values."""
    return await consume(peer, directory, durability, workload, workload.receive_one_messages, 1)


async def send_all(client: QueueClient, value: bytes, count: int, batch_size: int) -> None:
    """Send `count` copies of `value` in `send_batch` calls of `batch_size` values."""
    remaining = count
    while remaining > 0:
        size = min(batch_size, remaining)
        await client.send_batch([value] * size)
        remaining -= size


async def consume(peer: Peer, directory: Path, durability: Durability, workload: Workload, count: int,
                  receive_size: int) -> Sample:
    """Fill a queue with `count` values (not timed), then time receiving and acking all of them.

    The sample carries an error for every message that was lost or delivered
    more than once, checked after the timed part.
    """
    value = make_value(workload.value_bytes)
    client = await peer.open(directory, durability, workload)
    try:
        await send_all(client, value, count, workload.batch_size)
        server_before = await read_server_cpu_seconds(client)
        with Stopwatch() as watch:
            delivered = await receive_and_ack_all(peer, client, count, receive_size)
        server_after = await read_server_cpu_seconds(client)
    finally:
        await client.close()
    return with_server_cpu(watch.sample(count, check_exactly_once(delivered, count)), server_before, server_after)


async def consume_priorities(peer: Peer, directory: Path, durability: Durability, workload: Workload) -> Sample:
    """Fill a priority queue with `messages` values of mixed priorities (not timed), then time consuming them.

    The priorities follow bench.scenarios.PRIORITY_SHARES, shuffled with
    `workload.seed`, and go out in `send_batch_priorities` calls of
    `batch_size` values. The timed part is `receive(batch_size)` and
    `ack_batch`, as in the batched consume scenario. The sample carries an
    error for every message lost or delivered more than once, and for each
    break of priority order: higher priority first, send order within a
    priority.
    """
    value = make_value(workload.value_bytes)
    count = workload.messages
    priorities = make_priorities(count, workload.seed)
    client = await peer.open_priority_queue(directory, durability, workload)
    try:
        sent_ids: list[int] = []
        for start in range(0, count, workload.batch_size):
            chunk = priorities[start:start + workload.batch_size]
            sent_ids.extend(await client.send_batch_priorities([value] * len(chunk), chunk))
        server_before = await read_server_cpu_seconds(client)
        with Stopwatch() as watch:
            delivered = await receive_and_ack_all(peer, client, count, workload.batch_size)
        server_after = await read_server_cpu_seconds(client)
    finally:
        await client.close()
    errors = check_exactly_once(delivered, count) + check_priority_order(delivered, sent_ids, priorities)
    return with_server_cpu(watch.sample(count, errors), server_before, server_after)


async def receive_and_ack_all(peer: Peer, client: QueueClient, count: int, receive_size: int) -> array:
    """Receive `receive_size` at a time and ack until `count` messages arrived; return their ids in delivery order.

    Acks with `ack` per message when `receive_size` is 1 and with `ack_batch`
    otherwise, then calls `finish_consuming`. Raises RuntimeError when a
    receive returns nothing before `count` messages arrived, because the
    queue was filled beforehand.
    """
    delivered = array("q")
    while len(delivered) < count:
        messages = await client.receive(receive_size)
        if not messages:
            raise RuntimeError(
                f"{peer.name}: receive returned no messages after {len(delivered)} of {count}, "
                "although the queue was filled beforehand"
            )
        delivered.extend(client.message_ids(messages))
        if receive_size == 1:
            for message in messages:
                await client.ack(message)
        else:
            await client.ack_batch(messages)
    await client.finish_consuming()
    return delivered


def check_exactly_once(delivered: array, count: int) -> tuple[str, ...]:
    """Return an error for each way `delivered` differs from `count` distinct messages."""
    errors = []
    distinct = len(set(delivered))
    if distinct != len(delivered):
        errors.append(f"{len(delivered) - distinct} messages were delivered more than once")
    if distinct != count:
        errors.append(f"{distinct} distinct messages were delivered, expected {count}")
    return tuple(errors)


def check_priority_order(delivered: Sequence[int], sent_ids: Sequence[int],
                         sent_priorities: Sequence[int]) -> tuple[str, ...]:
    """Return an error for each way `delivered` breaks priority order: higher priority first, send order within one.

    `sent_ids[i]` is the id of the i-th message sent and `sent_priorities[i]`
    its priority. Lost and repeated messages are `check_exactly_once`'s
    findings, not this function's.
    """
    errors: list[str] = []
    send_index = {message_id: index for index, message_id in enumerate(sent_ids)}
    if len(send_index) != len(sent_ids):
        errors.append(f"send_batch_priorities returned {len(sent_ids) - len(send_index)} ids more than once")
    unknown = [message_id for message_id in delivered if message_id not in send_index]
    if unknown:
        errors.append(f"{len(unknown)} delivered ids were never returned by send_batch_priorities, first {unknown[0]}")

    breaks = 0
    first_break = ""
    previous: tuple[int, int] | None = None
    for message_id in delivered:
        index = send_index.get(message_id)
        if index is None:
            continue
        # Sort key of the promised order: higher priority first, then send order.
        key = (-sent_priorities[index], index)
        if previous is not None and key <= previous:
            breaks += 1
            if not first_break:
                first_break = (f"send {index} (priority {sent_priorities[index]}) was delivered after "
                               f"send {previous[1]} (priority {-previous[0]})")
        previous = key
    if breaks:
        errors.append(f"{breaks} deliveries out of priority order; first: {first_break}")
    return tuple(errors)


ScenarioRun = Callable[[Peer, Path, Durability, Workload], Awaitable[Sample | None]]

PRODUCE_BATCHED = "produce, send_batch"
PRODUCE_PER_CALL = "produce, one per call"
CONSUME_BATCHED = "receive(batch) + ack_batch"
CONSUME_ONE = "receive(1) + ack, one at a time"
CONSUME_PRIORITIES = "priorities: receive(batch) + ack_batch"

# Report order.
SCENARIOS: dict[str, ScenarioRun] = {
    PRODUCE_BATCHED: produce_batched,
    PRODUCE_PER_CALL: produce_per_call,
    CONSUME_BATCHED: consume_batched,
    CONSUME_ONE: consume_one_at_a_time,
    CONSUME_PRIORITIES: consume_priorities,
}

# Scenarios whose runs check delivery; their rows get "ok" or "FAILED" in the check column.
CONSUME_SCENARIOS = frozenset({CONSUME_BATCHED, CONSUME_ONE, CONSUME_PRIORITIES})
