"""Messages as consumers and replays return them, and the encoding of values."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from logq.errors import InvalidArgumentError
from logq.segments import FLAG_JSON, Record

if TYPE_CHECKING:
    from logq.consumer import Consumer


def encode_value(value: Any) -> tuple[bytes, int]:
    """Return the stored bytes of `value` and its record flags.

    bytes, bytearray and memoryview are stored as they are. Any other value is
    encoded as JSON with orjson and flagged, so receivers get it back decoded.
    Raises InvalidArgumentError for a value orjson cannot encode.
    """
    if isinstance(value, bytes):
        return value, 0
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value), 0
    try:
        return orjson.dumps(value), FLAG_JSON
    except TypeError as exc:
        raise InvalidArgumentError(
            f"cannot encode a value of type {type(value).__name__} as JSON ({exc}); "
            "pass bytes, or a str, number, bool, None, list or dict"
        ) from exc


@dataclass(frozen=True, slots=True)
class Message:
    """A stored message with its position and, for a consumer group, its delivery.

    `value` is the decoded value: the bytes that were sent, or the Python value
    that was sent as JSON. `raw_value` is always the stored bytes.
    `timestamp_ms` is the append time in ms since the Unix epoch. `group` is
    None for messages read by `Log.replay`.
    """

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    headers: dict[str, str]
    priority: int
    raw_value: bytes
    is_json: bool
    group: str | None = None
    _consumer: Consumer | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_record(
        cls, topic: str, partition: int, record: Record, *, group: str | None = None, consumer: Consumer | None = None
    ) -> Message:
        """Build a message from a decoded record."""
        return cls(
            topic=topic,
            partition=partition,
            offset=record.offset,
            timestamp_ms=record.timestamp_ms,
            key=record.key,
            headers=dict(record.headers),
            priority=record.priority,
            raw_value=record.value,
            is_json=bool(record.flags & FLAG_JSON),
            group=group,
            _consumer=consumer,
        )

    @property
    def value(self) -> Any:
        """The value as sent: bytes, or the decoded JSON value."""
        if self.is_json:
            return orjson.loads(self.raw_value)
        return self.raw_value

    @property
    def timestamp(self) -> datetime:
        """The append time as an aware UTC datetime."""
        return datetime.fromtimestamp(self.timestamp_ms / 1000, tz=UTC)

    async def ack(self) -> None:
        """Mark the message done for its group (see `Consumer.ack`).

        Raises InvalidArgumentError for a message that came from a replay,
        which has no group to acknowledge to.
        """
        if self._consumer is None:
            raise InvalidArgumentError(
                f"message {self.topic}/{self.partition}@{self.offset} was read without a group; "
                "only messages from a consumer can be acked"
            )
        await self._consumer.ack(self)
