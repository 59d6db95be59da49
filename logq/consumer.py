"""Consumers: members of a consumer group that receive and ack a topic's messages."""

from __future__ import annotations

import itertools
import logging
import time
from collections import defaultdict, deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

from logq.consumers import Group, PartitionState
from logq.errors import ClosedError, InvalidArgumentError
from logq.message import Message
from logq.segments import Record
from logq.topics import Topic

if TYPE_CHECKING:
    from logq.log import Log

logger = logging.getLogger(__name__)

StartPosition = Literal["earliest", "latest"]
_consumer_ids = itertools.count(1)
READ_BYTES = 1024 * 1024


class Consumer:
    """One member of a consumer group reading one topic.

    Every group sees every message of the topic; consumers of the same group
    in this process share the messages, each delivered to one of them. A
    message is done when it is acked; the committed offset moves over each
    run of done offsets and is stored in the group journal.

    With `auto_ack=True` (the default) the messages a consumer returned are
    acked when it is asked for more and when it closes, which is the
    "processed once you come back" rule of Kafka's auto-commit. With
    `auto_ack=False`, call `ack`. Messages not acked when the consumer closes
    are delivered again to the group, and after a restart everything from
    the committed offset on is delivered again (at-least-once).

    Use it as an async iterator (it waits for new messages forever) or call
    `receive`. Close it with `close` or `async with`.
    """

    def __init__(self, log: Log, topic: Topic, group: str, *, auto_ack: bool, start: StartPosition) -> None:
        self._log = log
        self._topic = topic
        self._group_name = group
        self._group_state: Group | None = None
        self.auto_ack = auto_ack
        self.start = start
        self._id = next(_consumer_ids)
        self._joined = False
        self._closed = False
        self._next_partition = 0
        self._returned: list[Message] = []
        self._buffer: deque[Message] = deque()
        # Records read from a partition beyond what the last receive needed,
        # so the next receive does not read and decode the same batches again.
        self._read_ahead: defaultdict[int, deque[Record]] = defaultdict(deque)

    @property
    def topic(self) -> str:
        """Name of the topic this consumer reads."""
        return self._topic.name

    @property
    def group(self) -> str:
        """Name of the consumer group."""
        return self._group_name

    @property
    def _group(self) -> Group:
        assert self._group_state is not None, "the consumer has not joined its group yet"
        return self._group_state

    async def __aenter__(self) -> Consumer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> Message:
        while not self._buffer:
            if self._closed or self._log.closed:
                raise StopAsyncIteration
            self._buffer.extend(await self._receive(100, None, count_as_returned=False))
        message = self._buffer.popleft()
        if self.auto_ack:
            self._returned.append(message)
        return message

    async def receive(self, max_messages: int = 100, *, timeout: float | None = 0.0) -> list[Message]:
        """Return up to `max_messages` messages, waiting up to `timeout` seconds for the first.

        `timeout=0` returns at once, possibly with an empty list; `None` waits
        until a message arrives. A message appended while it waits wakes it at
        once. Cancelling it loses nothing: messages taken for a cancelled call
        are delivered again when the consumer closes.
        Raises InvalidArgumentError for a bad count or timeout and ClosedError
        after `close`.
        """
        if isinstance(max_messages, bool) or not isinstance(max_messages, int) or max_messages < 1:
            raise InvalidArgumentError(f"max_messages must be an int >= 1, got {max_messages!r}")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0):
            raise InvalidArgumentError(f"timeout must be a number of seconds >= 0 or None, got {timeout!r}")
        taken = [self._buffer.popleft() for _ in range(min(max_messages, len(self._buffer)))]
        if taken:
            if self.auto_ack:
                self._returned.extend(taken)
            return taken
        return await self._receive(max_messages, timeout, count_as_returned=True)

    async def _receive(self, max_messages: int, timeout: float | None, *, count_as_returned: bool) -> list[Message]:
        self._check_open()
        await self._join()
        if self.auto_ack and self._returned:
            await self.ack(self._returned)
            self._returned = []
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            messages = await self._take(max_messages)
            if messages:
                if self.auto_ack and count_as_returned:
                    self._returned.extend(messages)
                return messages
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return []
            await self._topic.wait_for_append(remaining)
            self._check_open()

    async def _join(self) -> None:
        if self._joined:
            return
        self._group_state = await self._log.group(self._group_name)
        for number, partition in enumerate(self._topic.partitions):
            initial = partition.log_start_offset if self.start == "earliest" else partition.high_watermark
            await self._group.join(self._topic.name, number, initial)
        self._joined = True

    async def _take(self, limit: int) -> list[Message]:
        """Take up to `limit` ready messages, visiting partitions round-robin."""
        messages: list[Message] = []
        count = len(self._topic.partitions)
        for step in range(count):
            if len(messages) >= limit:
                break
            number = (self._next_partition + step) % count
            messages.extend(await self._take_from(number, limit - len(messages)))
        self._next_partition = (self._next_partition + 1) % count
        return messages

    async def _take_from(self, number: int, limit: int) -> list[Message]:
        partition = self._topic.partitions[number]
        await self._group.skip_removed(self._topic.name, number, partition.log_start_offset)
        state = self._group.states[(self._topic.name, number)]
        messages = [
            await self._redeliver(number, state, offset) for offset in state.next_released(limit)
        ]
        messages = [message for message in messages if message is not None]
        read_ahead = self._read_ahead[number]
        while len(messages) < limit and state.cursor < partition.high_watermark:
            if not read_ahead or read_ahead[0].offset > state.cursor:
                read_ahead.clear()
                read_ahead.extend(await partition.read(state.cursor, max_bytes=READ_BYTES))
                if not read_ahead:
                    break
            while read_ahead and len(messages) < limit:
                record = read_ahead.popleft()
                if record.offset < state.cursor:
                    continue  # another consumer of the group delivered it
                if state.is_done(record.offset):
                    state.pass_over(record.offset)
                    continue
                state.deliver(record.offset, self._id)
                messages.append(self._message(number, record))
        return messages

    async def _redeliver(self, number: int, state: PartitionState, offset: int) -> Message | None:
        records = await self._topic.partitions[number].read(offset, max_bytes=1)
        record = next((record for record in records if record.offset == offset), None)
        if record is None:
            return None
        state.deliver(offset, self._id)
        return self._message(number, record)

    def _message(self, number: int, record: Record) -> Message:
        return Message.from_record(self._topic.name, number, record, group=self._group_name, consumer=self)

    async def ack(self, messages: Message | Iterable[Message]) -> int:
        """Mark messages done for this group; return how many were not done before.

        Acking a done message is a no-op. Raises InvalidArgumentError for a
        message of another topic or group and OffsetOutOfRangeError for an
        offset that was never written.
        """
        if isinstance(messages, Message):
            messages = [messages]
        by_partition: dict[int, list[int]] = defaultdict(list)
        for message in messages:
            if message.topic != self._topic.name or message.group != self._group_name:
                raise InvalidArgumentError(
                    f"message {message.topic}/{message.partition}@{message.offset} of group "
                    f"{message.group!r} cannot be acked by a consumer of {self._topic.name!r} "
                    f"in group {self._group_name!r}"
                )
            by_partition[message.partition].append(message.offset)
        newly_done = 0
        for number, offsets in by_partition.items():
            log_end = self._topic.partitions[number].log_end_offset
            newly_done += await self._group.ack(self._topic.name, number, offsets, log_end)
        return newly_done

    async def close(self) -> None:
        """Ack what auto-ack owes, return unacked messages to the group and detach.

        Safe to call twice.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self.auto_ack and self._returned and not self._log.closed:
                await self.ack(self._returned)
        finally:
            self._returned = []
            self._buffer.clear()
            self._read_ahead.clear()
            released = 0 if self._group_state is None else self._group_state.release(self._id)
            if released:
                logger.info("consumer %d of group %s closed; %d unacked messages go back to the group",
                            self._id, self._group_name, released)
            self._log._forget_consumer(self)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"consumer of group {self._group_name!r} on {self._topic.name!r} is closed")
        if self._log.closed:
            raise ClosedError("the log is closed; open it again to consume")

