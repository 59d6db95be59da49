"""Consumers: members of a consumer group that lease, ack, nack and reject a topic's messages."""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import defaultdict, deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

from logq.consumers.config import MAX_SECONDS
from logq.errors import ClosedError, InvalidArgumentError
from logq.message import Message
from logq.topics import Topic

if TYPE_CHECKING:
    from logq.delivery import GroupRuntime
    from logq.log import Log

logger = logging.getLogger(__name__)

StartPosition = Literal["earliest", "latest"]
_consumer_ids = itertools.count(1)


def _check_seconds(name: str, value: object, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InvalidArgumentError(f"{name} must be a finite number of seconds >= 0, got {value!r}")


class Consumer:
    """One member of a consumer group reading one topic.

    Every group receives every message of the topic. Consumers of the same
    group compete: each message is leased to one consumer at a time, for the
    group's lease timeout. A message is done when it is acked or
    dead-lettered. A nack, an expired lease or a closed consumer makes it
    ready for redelivery. After the group's max deliveries it goes to the
    dead-letter topic.

    With `auto_ack=True` the messages a consumer returned are acked when it is
    asked for more and when it closes (Kafka's auto-commit rule), except that
    an `async with` block left by an exception does not ack what the last
    receive or iteration step returned: that is delivered again. With
    `auto_ack=False` (the work-queue style), call `ack`, `nack` or `reject`.

    Use it as an async iterator (it waits for new messages forever) or call
    `receive`. Close it with `close` or `async with`.
    """

    def __init__(self, log: Log, topic: Topic, group: str, *, auto_ack: bool, start: StartPosition,
                 prefetch: int = 10) -> None:
        self._log = log
        self._topic = topic
        self._group_name = group
        self._runtime: GroupRuntime | None = None
        self.auto_ack = auto_ack
        self.start = start
        # "latest" means the log end when the consumer was made, not when it first receives.
        self._latest = [partition.high_watermark for partition in topic.partitions] if start == "latest" else None
        self.prefetch = prefetch
        self.id = next(_consumer_ids)
        self._closed = False
        self._next_partition = 0
        self._returned: list[Message] = []
        self._last_returned_count = 0  # how many of `_returned` the latest receive or iteration step returned
        self._buffer: deque[Message] = deque()

    @property
    def topic(self) -> str:
        """Name of the topic this consumer reads."""
        return self._topic.name

    @property
    def group(self) -> str:
        """Name of the consumer group."""
        return self._group_name

    async def __aenter__(self) -> Consumer:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if exc_type is not None and self.auto_ack and self._returned:
            # The error came while the application handled what the last call returned, so
            # auto-ack must not mark that done; close releases it for redelivery instead.
            unfinished = self._returned[-self._last_returned_count:]
            self._returned = self._returned[:-self._last_returned_count]
            logger.info("consumer %d of group %s exits with %s; the %d messages it returned last are not "
                        "acked and will be delivered again", self.id, self._group_name, exc_type.__name__,
                        len(unfinished))
        await self.close()

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> Message:
        while not self._buffer:
            if self._closed or self._log.closed:
                raise StopAsyncIteration
            self._buffer.extend(await self._receive(self.prefetch, None, None, count_as_returned=False))
        message = self._buffer.popleft()
        if self.auto_ack:
            self._returned.append(message)
            self._last_returned_count = 1
        return message

    async def receive(self, max_messages: int = 100, *, timeout: float | None = 0.0,
                      lease: float | None = None) -> list[Message]:
        """Lease and return up to `max_messages` messages, waiting up to `timeout` seconds for the first.

        `timeout=0` returns at once, possibly with an empty list; `None` waits
        until a message arrives. An append or a lease expiry wakes a waiting
        receive at once. `lease` overrides the group's lease timeout, in
        seconds. A receive that is cancelled or fails midway makes the
        messages it leased ready again at once, with their delivery counts
        taken back.
        Raises InvalidArgumentError for a bad count, timeout or lease and
        ClosedError after `close`.
        """
        if isinstance(max_messages, bool) or not isinstance(max_messages, int) or max_messages < 1:
            raise InvalidArgumentError(f"max_messages must be an int >= 1, got {max_messages!r}")
        _check_seconds("timeout", timeout, allow_none=True)
        _check_seconds("lease", lease, allow_none=True)
        if lease is not None and not 0 < lease <= MAX_SECONDS:
            raise InvalidArgumentError(f"lease must be a number of seconds > 0 and at most {MAX_SECONDS}, got {lease!r}")
        buffered = [self._buffer.popleft() for _ in range(min(max_messages, len(self._buffer)))]
        if buffered:
            if self.auto_ack:
                self._returned.extend(buffered)
                self._last_returned_count = len(buffered)
            return buffered
        return await self._receive(max_messages, timeout, lease, count_as_returned=True)

    async def _receive(self, max_messages: int, timeout: float | None, lease: float | None, *,
                       count_as_returned: bool) -> list[Message]:
        runtime = await self._join()
        if self.auto_ack and self._returned:
            returned, self._returned = self._returned, []
            await self.ack(returned)
        lease_seconds = runtime.group.config.lease_timeout if lease is None else lease
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            notify_count = self._topic.notify_count
            messages = await runtime.take(self, self._topic, self._partition_order(), max_messages, lease_seconds)
            if messages:
                if self.auto_ack and count_as_returned:
                    self._returned.extend(messages)
                    self._last_returned_count = len(messages)
                return messages
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return []
            await self._topic.wait_for_append(self._wait_time(runtime, remaining), since=notify_count)
            self._check_open()

    def _wait_time(self, runtime: GroupRuntime, remaining: float | None) -> float | None:
        """Cap a wait at the group's next lease deadline or delay end, when one is due sooner."""
        timer = runtime.group.next_timer()
        if timer is None:
            return remaining
        until_timer = max(0.0, timer - runtime.group.clock()) + 0.001
        return until_timer if remaining is None else min(remaining, until_timer)

    def _partition_order(self) -> list[int]:
        count = len(self._topic.partitions)
        order = [(self._next_partition + step) % count for step in range(count)]
        self._next_partition = (self._next_partition + 1) % count
        return order

    async def _join(self) -> GroupRuntime:
        self._check_open()
        if self._runtime is None:
            runtime = await self._log._runtime(self._group_name)
            await runtime.join(self._topic, self.start, latest=self._latest)
            self._runtime = runtime
        return self._runtime

    async def peek(self, max_messages: int = 1) -> list[Message]:
        """Return the messages the next receives would get, changing nothing.

        The messages carry no lease and cannot be acked.
        """
        if isinstance(max_messages, bool) or not isinstance(max_messages, int) or max_messages < 1:
            raise InvalidArgumentError(f"max_messages must be an int >= 1, got {max_messages!r}")
        runtime = await self._join()
        count = len(self._topic.partitions)
        order = [(self._next_partition + step) % count for step in range(count)]
        return await runtime.peek(self._topic, max_messages, order)

    async def ack(self, messages: Message | Iterable[Message]) -> int:
        """Mark messages done for this group; return how many were not done before.

        Acking a done message is a no-op. Any consumer of the group may ack a
        message, even after its lease expired. Raises InvalidArgumentError for
        a message of another topic or group and OffsetOutOfRangeError for an
        offset that was never written.
        """
        runtime = await self._join()
        if isinstance(messages, Message):
            messages = [messages]
        elif isinstance(messages, (str, bytes)) or not isinstance(messages, Iterable):
            raise InvalidArgumentError(
                f"expected a Message or a list of Messages from Consumer.receive, "
                f"got {type(messages).__name__} {messages!r:.80}"
            )
        by_partition: dict[int, list[int]] = defaultdict(list)
        topic_name, group_name = self._topic.name, self._group_name
        for message in messages:
            if not isinstance(message, Message) or message.topic != topic_name or message.group != group_name:
                self._check_mine(message)
            by_partition[message.partition].append(message.offset)
        newly_done = 0
        async with runtime.lock:
            for number, offsets in by_partition.items():
                log_end = self._topic.partitions[number].log_end_offset
                newly_done += await runtime.group.ack(self._topic.name, number, offsets, log_end)
        if newly_done and runtime.group.config.key_ordering:
            # An ack may free a key, whose next held message is then ready.
            runtime._wake_readers()
        return newly_done

    async def ack_batch(self, messages: Iterable[Message]) -> int:
        """Ack several messages with one journal write per partition; the same as `ack`."""
        return await self.ack(messages)

    async def nack(self, message: Message, *, delay: float | None = None) -> None:
        """Report a failed delivery; the message is redelivered after `delay` seconds.

        `delay` None uses the group's retry policy (no delay by default). When
        the message reached the group's max deliveries it goes to the
        dead-letter topic instead. Raises LeaseError when this consumer no
        longer holds the lease (it expired, or the message was acked).
        """
        runtime = await self._join()
        self._check_mine(message)
        await runtime.nack(message, self.id, delay)

    async def extend(self, message: Message, *, seconds: float | None = None) -> float:
        """Extend the lease to `seconds` from now (default: the group's lease timeout); return the deadline.

        Raises LeaseError when this consumer no longer holds the lease.
        """
        runtime = await self._join()
        self._check_mine(message)
        _check_seconds("seconds", seconds, allow_none=True)
        if seconds is not None and seconds > MAX_SECONDS:
            raise InvalidArgumentError(f"seconds must be at most {MAX_SECONDS} (366 days), got {seconds!r}")
        seconds = runtime.group.config.lease_timeout if seconds is None else seconds
        async with runtime.lock:
            await runtime.handle_expired()
            return await runtime.group.extend(message.topic, message.partition, message.offset,
                                              owner=self.id, seconds=seconds)

    async def reject(self, message: Message, *, reason: str = "rejected") -> None:
        """Send the message to the dead-letter topic at once, whatever its delivery count.

        Raises LeaseError when this consumer no longer holds the lease.
        """
        runtime = await self._join()
        self._check_mine(message)
        await runtime.reject(message, self.id, reason)

    def _check_mine(self, message: Message) -> None:
        if not isinstance(message, Message):
            raise InvalidArgumentError(
                f"expected a Message from Consumer.receive, got {type(message).__name__} {message!r:.80}"
            )
        if message.topic != self._topic.name or message.group != self._group_name:
            raise InvalidArgumentError(
                f"message {message.topic}/{message.partition}@{message.offset} of group "
                f"{message.group!r} cannot be handled by a consumer of {self._topic.name!r} "
                f"in group {self._group_name!r}"
            )

    async def close(self) -> None:
        """Ack what auto-ack owes, make unacked leases ready for redelivery, and detach.

        Messages fetched for the iterator but never returned get their delivery
        count back. Safe to call twice.
        """
        if self._closed:
            return
        try:
            if self.auto_ack and self._returned and not self._log.closed:
                await self.ack(self._returned)
        finally:
            self._closed = True
            unseen = {(m.topic, m.partition, m.offset) for m in self._buffer}
            self._returned = []
            self._buffer.clear()
            try:
                if self._runtime is not None and not self._log.closed:
                    try:
                        async with self._runtime.lock:
                            released = await self._runtime.group.release(self.id, unseen=unseen)
                    finally:
                        # Also after a failed journal write: the leases are released in memory all the same.
                        self._runtime._wake_readers()
                    if released:
                        logger.info("consumer %d of group %s closed; %d unacked messages are ready again",
                                    self.id, self._group_name, released)
            finally:
                self._log._forget_consumer(self)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"consumer of group {self._group_name!r} on {self._topic.name!r} is closed")
        if self._log.closed:
            raise ClosedError("the log is closed; open it again to consume")
