"""Messages as consumers and replays return them, and the encoding of values."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from operator import itemgetter
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
        encoded = orjson.dumps(value)
    except TypeError as exc:
        raise InvalidArgumentError(
            f"cannot encode a value of type {type(value).__name__} as JSON ({exc}); "
            "pass bytes, or a str, number, bool, None, list or dict"
        ) from exc
    # orjson writes NaN and infinity as null, which would change the value without a word.
    # Only an encoding that contains null can hide one, so most values skip the walk.
    if b"null" in encoded:
        bad = _first_non_finite(value)
        if bad is not None:
            raise InvalidArgumentError(
                f"cannot encode {bad!r} as JSON: JSON has no NaN or infinity, and storing it as null would "
                "change the value; use None, a finite number or a string such as 'NaN'"
            )
    return encoded, FLAG_JSON


def _first_non_finite(value: Any) -> float | None:
    """Return the first NaN or infinite float inside `value` (lists, tuples and dict values), or None."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return item
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
    return None


class Message(tuple):
    """A stored message with its position and, for a consumer group, its delivery.

    `value` is the decoded value: the bytes that were sent, or the Python value
    that was sent as JSON. `raw_value` is always the stored bytes.
    `timestamp_ms` is the append time in ms since the Unix epoch. `group` is
    None for messages read by `Log.replay`. `delivery_count` counts this
    delivery (the first is 1). Replay gives 0, and peek gives the deliveries
    so far. `lease_deadline` is when the lease ends, in seconds since the
    epoch (None without a lease).

    Messages are immutable. The class is a tuple subclass because a receive
    builds one per message and a tuple is the cheapest immutable object to
    create. Use the attributes; the tuple layout is not part of the API.
    Two messages are equal when every attribute is.
    """

    __slots__ = ()

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
        return tuple.__new__(cls, (topic, partition, record, group, delivery_count, lease_deadline, consumer))

    @classmethod
    def delivered(cls, topic: str, partition: int, record: Record, group: str, delivery_count: int,
                  lease_deadline: float, consumer: Consumer) -> Message:
        """Build a message leased to `consumer`; `from_record` with positional arguments, for receive's loop."""
        return tuple.__new__(cls, (topic, partition, record, group, delivery_count, lease_deadline, consumer))

    # The layout: (topic, partition, record, group, delivery_count, lease_deadline, consumer).
    topic: str = property(itemgetter(0), doc="Topic name.")  # type: ignore[assignment]
    partition: int = property(itemgetter(1), doc="Partition number.")  # type: ignore[assignment]
    _record: Record = property(itemgetter(2))  # type: ignore[assignment]
    group: str | None = property(itemgetter(3), doc="Consumer group, None for replay.")  # type: ignore[assignment]
    delivery_count: int = property(itemgetter(4), doc="Deliveries counting this one.")  # type: ignore[assignment]
    lease_deadline: float | None = property(  # type: ignore[assignment]
        itemgetter(5), doc="End of the lease in seconds since the epoch, None without a lease."
    )
    _consumer: Consumer | None = property(itemgetter(6))  # type: ignore[assignment]

    @property
    def offset(self) -> int:
        """Offset in the partition."""
        return self[2].offset

    @property
    def timestamp_ms(self) -> int:
        """Append time in ms since the Unix epoch."""
        return self[2].timestamp_ms

    @property
    def key(self) -> bytes | None:
        """Key bytes, or None."""
        return self[2].key

    @property
    def headers(self) -> dict[str, str]:
        """Headers as a new dict; a repeated name keeps its last value."""
        return dict(self[2].headers)

    @property
    def priority(self) -> int:
        """Priority, 0 to 255; higher is delivered first."""
        return self[2].priority

    @property
    def raw_value(self) -> bytes:
        """The stored bytes of the value."""
        return self[2].value

    @property
    def is_json(self) -> bool:
        """True when the value was sent as JSON and `value` decodes it."""
        return bool(self[2].flags & FLAG_JSON)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        # The consumer that received a message is not part of its identity.
        return tuple.__eq__(self[:6], other[:6])

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __hash__(self) -> int:
        return hash(self[:6])

    def __repr__(self) -> str:
        return (
            f"Message(topic={self.topic!r}, partition={self.partition}, offset={self.offset}, "
            f"timestamp_ms={self.timestamp_ms}, key={self.key!r}, headers={self.headers!r}, "
            f"priority={self.priority}, raw_value={self.raw_value!r}, is_json={self.is_json}, "
            f"group={self.group!r}, delivery_count={self.delivery_count}, lease_deadline={self.lease_deadline!r})"
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
