"""Dead letters: listing, redriving and purging the messages a group failed.

A dead letter is a copy of the failed message in the group's dead-letter
topic, by default `<topic>.<group>.dlq`. Its `logq.dlq.*` headers name the
source topic, partition and offset, the group, the reason, the delivery count
and the first and last failure times (ISO 8601, UTC).

Redriving a dead letter makes the original message ready again in the group
that failed it, with a fresh delivery count. The message is not appended
again, so no other group receives it twice. If retention already deleted the
original, the dead letter is skipped and stays in the dead-letter topic, from
where it can be read and sent again by hand.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from logq.delivery import DLQ_HEADER_PREFIX
from logq.errors import InvalidArgumentError
from logq.message import Message

if TYPE_CHECKING:
    from logq.log import Log


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message in a dead-letter topic, with the facts its headers record."""

    dlq_topic: str
    dlq_offset: int
    source_topic: str
    source_partition: int
    source_offset: int
    group: str
    reason: str
    delivery_count: int
    first_failure: str
    last_failure: str
    redriven: bool
    message: Message


@dataclass(frozen=True, slots=True)
class RedriveReport:
    """Outcome of a redrive: dead-letter offsets redriven, and those skipped with the reason."""

    redriven: list[int] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)


def _header(message: Message, name: str) -> str:
    return message.headers.get(DLQ_HEADER_PREFIX + name, "")


async def list_dead_letters(log: Log, topic: str, group: str) -> list[DeadLetter]:
    """Return the dead letters `group` produced for `topic`, in dead-letter offset order."""
    log._topic(topic)
    owner = await log.group(group, create=False)
    dlq_name = owner.config.dead_letter_topic_for(topic, group)
    if dlq_name not in log.list_topics():
        return []
    letters = []
    async for message in log.replay(dlq_name):
        if _header(message, "group") != group or _header(message, "topic") != topic:
            continue
        letters.append(DeadLetter(
            dlq_topic=dlq_name,
            dlq_offset=message.offset,
            source_topic=topic,
            source_partition=int(_header(message, "partition")),
            source_offset=int(_header(message, "offset")),
            group=group,
            reason=_header(message, "reason"),
            delivery_count=int(_header(message, "delivery_count") or 0),
            first_failure=_header(message, "first_failure"),
            last_failure=_header(message, "last_failure"),
            redriven=(dlq_name, message.offset) in owner.redriven,
            message=message,
        ))
    return letters


async def redrive(log: Log, topic: str, group: str, offsets: Iterable[int] | None) -> RedriveReport:
    """Make dead letters ready again in `group`; see the module docstring for the rules."""
    target = log._topic(topic)
    letters = {letter.dlq_offset: letter for letter in await list_dead_letters(log, topic, group)}
    runtime = await log._runtime(group)
    await runtime.join(target, "earliest")
    report = RedriveReport()
    requested = sorted(letters) if offsets is None else sorted(set(offsets))
    for dlq_offset in requested:
        letter = letters.get(dlq_offset)
        reason = _skip_reason(log, letter, runtime)
        if reason is not None:
            if offsets is not None or letter is None or not letter.redriven:
                report.skipped[dlq_offset] = reason
            continue
        assert letter is not None
        async with runtime.lock:
            await runtime.group.redrive(
                topic, letter.source_partition, letter.source_offset, priority=letter.message.priority,
                key=letter.message.key, dlq_topic=letter.dlq_topic, dlq_offset=dlq_offset,
            )
        report.redriven.append(dlq_offset)
    runtime._wake_readers()
    return report


def _skip_reason(log: Log, letter: DeadLetter | None, runtime: object) -> str | None:
    if letter is None:
        return "not a dead letter of this topic and group"
    if letter.redriven:
        return "already redriven"
    partition = log._topic(letter.source_topic).partitions[letter.source_partition]
    if letter.source_offset < partition.log_start_offset:
        return (
            "the original message was deleted by retention; the dead letter stays in "
            f"{letter.dlq_topic} and can be sent again by hand"
        )
    state = runtime.group.states.get((letter.source_topic, letter.source_partition))  # type: ignore[attr-defined]
    if state is None or not state.is_done(letter.source_offset):
        return "the message is not done in the group (it is pending, or the group was reset)"
    if not runtime.group.is_dead(letter.source_topic, letter.source_partition, letter.source_offset):  # type: ignore[attr-defined]
        return "the message was acked after a reset or an earlier redrive, so it is not dead in the group"
    return None


async def purge(log: Log, topic: str, group: str) -> int:
    """Delete the group's dead-letter topic for `topic`; return how many messages it had."""
    log._topic(topic)
    owner = await log.group(group, create=False)
    dlq_name = owner.config.dead_letter_topic_for(topic, group)
    if dlq_name not in log.list_topics():
        return 0
    if dlq_name == topic or any(dlq_name == t for t, _ in owner.states):
        raise InvalidArgumentError(
            f"refusing to purge {dlq_name!r}: group {group!r} reads it as a source topic; "
            "set a separate dead_letter_topic with `logq groups configure`"
        )
    count = log.describe_topic(dlq_name).messages
    foreign = 0
    async for message in log.replay(dlq_name):
        if _header(message, "group") != group or _header(message, "topic") != topic:
            foreign += 1
    if foreign:
        raise InvalidArgumentError(
            f"refusing to purge {dlq_name!r}: {foreign} of its {count} messages are not dead letters "
            f"of topic {topic!r} in group {group!r}; delete the topic with `logq topics delete` "
            "if all of them should go"
        )
    await log.delete_topic(dlq_name)
    await owner.forget_dead_letter_topic(dlq_name)
    return count
