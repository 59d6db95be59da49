"""The interface every peer of bench.compare implements, and the timed loops that drive it.

A peer opens a `QueueClient` on a fresh data directory for one durability
class. The four scenarios below call only that client, so logq and every
peer run the same loop with the same message counts and value sizes.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from array import array
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bench.scenarios import Sample, Stopwatch, make_value

# "interval": the peer syncs to disk in the background or at checkpoints, so a
# power failure may lose the writes since the last sync. "always": every send
# and every ack returns only after its data is on disk.
Durability = Literal["interval", "always"]
DURABILITY_CLASSES: tuple[Durability, ...] = ("interval", "always")


@dataclass(frozen=True, slots=True)
class Workload:
    """Message counts, value size and batch size of one bench.compare invocation."""

    messages: int
    per_call_messages: int
    receive_one_messages: int
    value_bytes: int
    batch_size: int
    runs: int
    sqlite_transaction_rows: int


class QueueClient(ABC):
    """One open queue of a peer: a producer and one consumer on the same data directory.

    `receive` returns the peer's own message objects. `message_ids` maps them
    to integers that identify each message once, so the scenario can check
    that every message arrived exactly once.
    """

    @abstractmethod
    async def send_batch(self, values: list[bytes]) -> None:
        """Append `values` in order and return once they have the durability of the class."""

    @abstractmethod
    async def send(self, value: bytes) -> None:
        """Append one value and return once it has the durability of the class."""

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

    @abstractmethod
    def describe(self, durability: Durability, workload: Workload) -> str:
        """Return the settings that implement `durability`, for the report."""

    @abstractmethod
    async def open(self, directory: Path, durability: Durability, workload: Workload) -> QueueClient:
        """Open a new, empty queue in `directory`."""

    def versions(self) -> dict[str, str]:
        """Return the version of each library or server the peer uses, by name."""
        return {}

    def supports(self, scenario: str) -> bool:
        """Return whether the peer has the operations of `scenario`."""
        return True

    async def run(self, scenario: str, directory: Path, durability: Durability, workload: Workload) -> Sample | None:
        """Time one run of `scenario` in `directory`; return None if the peer has no such operation."""
        return await SCENARIOS[scenario](self, directory, durability, workload)


# -- the timed loops ------------------------------------------------------------------


async def produce_batched(peer: Peer, directory: Path, durability: Durability, workload: Workload) -> Sample:
    """Time `send_batch` calls of `batch_size` values until `messages` values are sent."""
    value = make_value(workload.value_bytes)
    client = await peer.open(directory, durability, workload)
    try:
        with Stopwatch() as watch:
            await send_all(client, value, workload.messages, workload.batch_size)
    finally:
        await client.close()
    return watch.sample(workload.messages)


async def produce_per_call(peer: Peer, directory: Path, durability: Durability, workload: Workload) -> Sample:
    """Time one `send` call per message for `per_call_messages` messages."""
    value = make_value(workload.value_bytes)
    count = workload.per_call_messages
    client = await peer.open(directory, durability, workload)
    try:
        with Stopwatch() as watch:
            for _ in range(count):
                await client.send(value)
    finally:
        await client.close()
    return watch.sample(count)


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
        delivered = array("q")
        with Stopwatch() as watch:
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
    finally:
        await client.close()
    return watch.sample(count, check_exactly_once(delivered, count))


def check_exactly_once(delivered: array, count: int) -> tuple[str, ...]:
    """Return an error for each way `delivered` differs from `count` distinct messages."""
    errors = []
    distinct = len(set(delivered))
    if distinct != len(delivered):
        errors.append(f"{len(delivered) - distinct} messages were delivered more than once")
    if distinct != count:
        errors.append(f"{distinct} distinct messages were delivered, expected {count}")
    return tuple(errors)


ScenarioRun = Callable[[Peer, Path, Durability, Workload], Awaitable[Sample | None]]

PRODUCE_BATCHED = "produce, send_batch"
PRODUCE_PER_CALL = "produce, one per call"
CONSUME_BATCHED = "receive(batch) + ack_batch"
CONSUME_ONE = "receive(1) + ack, one at a time"

# Report order.
SCENARIOS: dict[str, ScenarioRun] = {
    PRODUCE_BATCHED: produce_batched,
    PRODUCE_PER_CALL: produce_per_call,
    CONSUME_BATCHED: consume_batched,
    CONSUME_ONE: consume_one_at_a_time,
}
