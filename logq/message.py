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
    None for messages read by `Log.replay`. `delivery_count` counts this
    delivery (the first is 1). Replay gives 0, and peek gives the deliveries
    so far. `lease_deadline` is
    when the lease ends, in seconds since the epoch (None without a lease).
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
    delivery_count: int = 0
    lease_deadline: float | None = None
    _consumer: Consumer | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_record(
        cls,
        topic: str,
        partition: int,
        record: Record,
        *,
        group: str | None = None,
        consumer: Consumer | None = None,
        delivery_count: int = 0,
        lease_deadline: float | None = None,
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
            delivery_count=delivery_count,
            lease_deadline=lease_deadline,
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

    def _require_consumer(self) -> Consumer:
        if self._consumer is None:
            raise InvalidArgumentError(
                f"message {self.topic}/{self.partition}@{self.offset} was read without a consumer "
                "(replay or peek); only messages from Consumer.receive can be acked, nacked or rejected"
            )
        return self._consumer

    async def ack(self) -> None:
        """Mark the message done for its group; acking twice is a no-op (see `Consumer.ack`)."""
        await self._require_consumer().ack(self)

    async def nack(self, delay: float | None = None) -> None:
        """Report a failed delivery; the group redelivers it after `delay` seconds (see `Consumer.nack`)."""
        await self._require_consumer().nack(self, delay=delay)

    async def extend(self, seconds: float | None = None) -> float:
        """Keep the lease for `seconds` more from now; return the new deadline (see `Consumer.extend`)."""
        return await self._require_consumer().extend(self, seconds=seconds)

    async def reject(self, reason: str = "rejected") -> None:
        """Send the message to the dead-letter topic at once (see `Consumer.reject`)."""
        await self._require_consumer().reject(self, reason=reason)
