"""Settings of a consumer group, stored in `<data dir>/groups/<name>/group.json`."""

from __future__ import annotations

import logging
import zlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Final

import orjson

from logq.errors import InvalidConfigError, StorageError
from logq.names import MAX_NAME_LENGTH, validate_name

logger = logging.getLogger(__name__)

CONFIG_FILE_NAME: Final = "group.json"
# The maximum lease, delay or extension: 366 days, in seconds.
MAX_SECONDS: Final = 366 * 86400


@dataclass(frozen=True, slots=True)
class GroupConfig:
    """Settings for how a consumer group leases, retries and dead-letters messages.

    `lease_timeout`: seconds a consumer may keep a message before it counts as a
    failed delivery (default 30). `max_deliveries`: deliveries after which a
    failed message goes to the dead-letter topic (default 5; 0 never
    dead-letters). `dead_letter_topic`: defaults to `<topic>.<group>.dlq`.
    `retry_delay`: seconds before a failed message is redelivered (default 0).
    It is multiplied by `retry_backoff` for each further failure and capped at
    `retry_max_delay` seconds. A nack with an explicit delay overrides it.
    `key_ordering`: hold a key's later messages while an earlier one is
    pending. `starvation_limit`: after this many deliveries in a row that
    passed over an older waiting message, deliver the oldest one (None: strict
    priority order).
    """

    lease_timeout: float = 30.0
    max_deliveries: int = 5
    dead_letter_topic: str | None = None
    retry_delay: float = 0.0
    retry_backoff: float = 2.0
    retry_max_delay: float = 300.0
    key_ordering: bool = False
    starvation_limit: int | None = None

    def __post_init__(self) -> None:
        _check_seconds("lease_timeout", self.lease_timeout, low=0.001)
        _check_seconds("retry_delay", self.retry_delay, low=0.0)
        _check_seconds("retry_max_delay", self.retry_max_delay, low=0.0)
        if isinstance(self.retry_backoff, bool) or not isinstance(self.retry_backoff, (int, float)) or not 1.0 <= self.retry_backoff <= 100.0:
            raise InvalidConfigError(f"retry_backoff={self.retry_backoff!r} is invalid; use a number from 1 to 100")
        if isinstance(self.max_deliveries, bool) or not isinstance(self.max_deliveries, int) or not 0 <= self.max_deliveries <= 1_000_000:
            raise InvalidConfigError(f"max_deliveries={self.max_deliveries!r} is invalid; use an int from 0 (never) to 1000000")
        if not isinstance(self.key_ordering, bool):
            raise InvalidConfigError(f"key_ordering must be True or False, got {self.key_ordering!r}")
        if self.starvation_limit is not None and (
            isinstance(self.starvation_limit, bool) or not isinstance(self.starvation_limit, int) or self.starvation_limit < 1
        ):
            raise InvalidConfigError(f"starvation_limit={self.starvation_limit!r} is invalid; use an int >= 1 or None")
        if self.dead_letter_topic is not None:
            validate_name(self.dead_letter_topic, "dead-letter topic")

    def dead_letter_topic_for(self, topic: str, group: str) -> str:
        """Return the dead-letter topic for messages of `topic` that `group` failed.

        The default is `<topic>.<group>.dlq`. When that passes the name limit,
        the topic part is cut and a CRC-32 of both names keeps it unique. A
        configured dead-letter topic that is `topic` itself would feed failed
        messages back to the group, so the default is used then, with a warning.
        """
        if self.dead_letter_topic and self.dead_letter_topic != topic:
            return self.dead_letter_topic
        if self.dead_letter_topic:
            logger.warning("group %s: its dead-letter topic %r is the topic it reads, which would redeliver "
                           "failed messages for ever; using %s.%s.dlq instead", group, topic, topic, group)
        name = f"{topic}.{group}.dlq"
        if len(name.encode("utf-8")) <= MAX_NAME_LENGTH:
            return name
        checksum = zlib.crc32(f"{topic}\0{group}".encode())
        prefix = topic.encode("utf-8")[:MAX_NAME_LENGTH - 20].decode("utf-8", "ignore").rstrip()
        return f"{prefix}.{checksum:08x}.dlq"

    def redelivery_delay(self, failures: int) -> float:
        """Return the delay in seconds before redelivery after the `failures`-th failure (first = 1)."""
        if self.retry_delay <= 0:
            return 0.0
        return min(self.retry_delay * self.retry_backoff ** max(failures - 1, 0), self.retry_max_delay)

    def with_changes(self, **changes: Any) -> GroupConfig:
        """Return a copy with `changes` applied; raises InvalidConfigError for an unknown setting."""
        known = {field.name for field in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise InvalidConfigError(
                f"unknown group setting {', '.join(sorted(unknown))}; valid settings are {', '.join(sorted(known))}"
            )
        return GroupConfig(**{**asdict(self), **changes})

    def to_json(self) -> bytes:
        """Encode the settings as the contents of group.json."""
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2)

    @classmethod
    def load(cls, directory: Path) -> GroupConfig:
        """Read group.json from `directory`, or return the defaults when it does not exist."""
        path = directory / CONFIG_FILE_NAME
        try:
            values = orjson.loads(path.read_bytes())
            known = {field.name for field in fields(cls)}
            return cls(**{name: value for name, value in values.items() if name in known})
        except FileNotFoundError:
            return cls()
        except (orjson.JSONDecodeError, TypeError, AttributeError, InvalidConfigError) as exc:
            raise StorageError(f"{path}: not a valid group configuration ({exc}); fix or delete it") from exc


def _check_seconds(name: str, value: object, *, low: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= MAX_SECONDS:
        raise InvalidConfigError(f"{name}={value!r} is invalid; use a number of seconds from {low} to {MAX_SECONDS}")
