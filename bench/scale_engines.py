"""The engines that bench.scale grows and measures, and the settings of one run.

Each engine wraps one data directory: a producer, a main consumer, and the
steps that put a consumer where a child process of bench.scale_child expects
it. logq is one topic with one partition under `fsync="interval"`; its group
journals use the default `group_fsync="interval"`. sqlite is the table of
`RetainingSqliteQueue` (bench.scale_child): the sqlite3 peer's SQL in WAL mode
with `synchronous=NORMAL`, with acked rows kept.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import logq
from bench.scale_child import RetainingSqliteQueue

ENGINES = ("logq", "sqlite")

TOPIC = "scale"
MAIN_GROUP = "scale"
CHILD_GROUPS = {"in-flight": "scale-in-flight", "ack-holes": "scale-ack-holes"}
SQLITE_FILE_NAME = "queue.db"

# How long a child's receive waits for a message that bench.scale left for it.
CHILD_RECEIVE_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Settings:
    """Workload and output options of one bench.scale invocation, from the command line."""

    sizes: tuple[int, ...]
    sqlite_sizes: tuple[int, ...]
    window: int
    batch_size: int
    value_bytes: int
    consume_runs: int
    reopen_runs: int
    catch_up: str
    sqlite_transaction_rows: int
    parent_dir: str | None
    results_dir: Path
    profile: bool
    as_json: bool

    def sizes_of(self, engine: str) -> tuple[int, ...]:
        """Return the log sizes measured for `engine`."""
        return self.sizes if engine == "logq" else self.sqlite_sizes


class Engine(ABC):
    """One engine in its data directory: a producer and a main consumer, plus what the children need.

    Positions count messages from 0. A consumer at position p has acked every
    message below p and has none in flight.
    """

    name: str

    def __init__(self, directory: Path, settings: Settings) -> None:
        self.directory = directory
        self.settings = settings

    @abstractmethod
    async def open(self) -> None:
        """Open the data directory, creating it on the first call."""

    @abstractmethod
    async def close(self) -> None:
        """Close the data directory, so that a child process can open it."""

    @abstractmethod
    async def send_batch(self, values: list[bytes]) -> None:
        """Append `values` in one call."""

    @abstractmethod
    async def receive(self, max_messages: int) -> list[Any]:
        """Receive up to `max_messages` messages for the main consumer, without waiting."""

    @abstractmethod
    def offsets(self, messages: list[Any]) -> list[int]:
        """Return the position of each received message in the log, counted from 0."""

    @abstractmethod
    async def ack_batch(self, messages: list[Any]) -> None:
        """Ack received messages for the main consumer."""

    @abstractmethod
    async def rewind_main(self, position: int) -> None:
        """Put the main consumer at `position`, forgetting every delivery after it."""

    @abstractmethod
    async def skip_main(self, start: int, end: int) -> None:
        """Move the main consumer from `start` to `end` without receiving the messages in between."""

    @abstractmethod
    async def check_main_position(self, position: int) -> None:
        """Raise RuntimeError unless the main consumer is at `position`."""

    @abstractmethod
    async def prepare_child(self, role: str, position: int) -> None:
        """Put the consumer of a child role ("in-flight" or "ack-holes") at `position`."""

    @abstractmethod
    async def finish_size(self, size: int) -> None:
        """Leave the main consumer at `size` after the children ran, ready for the next size."""

    @abstractmethod
    def child_spec(self, role: str) -> dict[str, Any]:
        """Return the bench.scale_child spec of `role` for this engine's data directory."""

    def disk_bytes(self) -> int:
        """Return the bytes of every file in the data directory."""
        return sum(path.stat().st_size for path in self.directory.rglob("*") if path.is_file())


class LogqEngine(Engine):
    """logq with one topic of one partition under `fsync="interval"`.

    The main consumer is group MAIN_GROUP. Each child role reads with its own
    group, which `prepare_child` resets to the position the child needs.
    """

    name = "logq"

    def __init__(self, directory: Path, settings: Settings) -> None:
        super().__init__(directory, settings)
        self._log: logq.Log | None = None
        self._consumer: logq.Consumer | None = None

    @property
    def log(self) -> logq.Log:
        """The open log; raises RuntimeError when it is closed."""
        if self._log is None:
            raise RuntimeError("the logq engine is closed; call open() first")
        return self._log

    @property
    def consumer(self) -> logq.Consumer:
        """The main consumer; raises RuntimeError when the log is closed."""
        if self._consumer is None:
            raise RuntimeError("the logq engine is closed; call open() first")
        return self._consumer

    async def open(self) -> None:
        created = not self.directory.exists()
        self._log = await logq.open(self.directory)
        if created:
            await self._log.create_topic(TOPIC, fsync="interval")
            # Reopen children leave the message they received unacked, and
            # their close releases it, which counts a delivery. Turning
            # dead-lettering off keeps every message in the measured window.
            for group in (MAIN_GROUP, *CHILD_GROUPS.values()):
                await self._log.configure_group(group, max_deliveries=0)
            # Give the main group its position now, so that no measurement includes its first join.
            await self._log.reset_group(MAIN_GROUP, TOPIC, to=0)
        self._consumer = self._log.consumer(TOPIC, group=MAIN_GROUP, auto_ack=False)

    async def close(self) -> None:
        if self._log is not None:
            await self._log.close()
        self._log = None
        self._consumer = None

    async def send_batch(self, values: list[bytes]) -> None:
        await self.log.send_batch(TOPIC, values)

    async def receive(self, max_messages: int) -> list[logq.Message]:
        return await self.consumer.receive(max_messages, timeout=0)

    def offsets(self, messages: list[logq.Message]) -> list[int]:
        return [message.offset for message in messages]

    async def ack_batch(self, messages: list[logq.Message]) -> None:
        await self.consumer.ack_batch(messages)

    async def rewind_main(self, position: int) -> None:
        await self.log.reset_group(MAIN_GROUP, TOPIC, to=position)

    async def skip_main(self, start: int, end: int) -> None:
        await self.log.reset_group(MAIN_GROUP, TOPIC, to=end)

    async def check_main_position(self, position: int) -> None:
        rows = [row for row in await self.log.describe_group(MAIN_GROUP) if row.topic == TOPIC]
        if len(rows) != 1 or rows[0].committed_offset != position or rows[0].in_flight or rows[0].waiting:
            raise RuntimeError(f"group {MAIN_GROUP!r} should be at offset {position} with nothing in flight, "
                               f"but describe_group returned {rows}")

    async def prepare_child(self, role: str, position: int) -> None:
        await self.log.reset_group(CHILD_GROUPS[role], TOPIC, to=position)

    async def finish_size(self, size: int) -> None:
        await self.check_main_position(size)

    def child_spec(self, role: str) -> dict[str, Any]:
        return {
            "engine": "logq", "role": role, "path": str(self.directory), "topic": TOPIC,
            "group": MAIN_GROUP if role == "reopen" else CHILD_GROUPS[role],
            "count": self.settings.window, "batch_size": self.settings.batch_size,
            "receive_timeout": CHILD_RECEIVE_TIMEOUT_SECONDS,
        }


class SqliteEngine(Engine):
    """The sqlite3 WAL queue table that keeps acked rows, with `synchronous=NORMAL`.

    The table is one queue, so the main consumer and the children share it.
    A rewind makes the rows from a position on unclaimed and not acked, and
    `finish_size` marks the last window acked again after the children.
    """

    name = "sqlite"

    def __init__(self, directory: Path, settings: Settings) -> None:
        super().__init__(directory, settings)
        self._table: RetainingSqliteQueue | None = None

    @property
    def path(self) -> Path:
        """The database file."""
        return self.directory / SQLITE_FILE_NAME

    @property
    def table(self) -> RetainingSqliteQueue:
        """The open table; raises RuntimeError when it is closed."""
        if self._table is None:
            raise RuntimeError("the sqlite engine is closed; call open() first")
        return self._table

    async def open(self) -> None:
        created = not self.path.exists()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._table = RetainingSqliteQueue(self.path, self.settings.sqlite_transaction_rows, create=created)

    async def close(self) -> None:
        if self._table is not None:
            self._table.close()
        self._table = None

    async def send_batch(self, values: list[bytes]) -> None:
        self.table.send_batch(values)

    async def receive(self, max_messages: int) -> list[tuple[int, bytes]]:
        return self.table.receive(max_messages)

    def offsets(self, messages: list[tuple[int, bytes]]) -> list[int]:
        return [row[0] - 1 for row in messages]

    async def ack_batch(self, messages: list[tuple[int, bytes]]) -> None:
        self.table.ack_batch(messages)

    async def rewind_main(self, position: int) -> None:
        self.table.unclaim_from(position)

    async def skip_main(self, start: int, end: int) -> None:
        self.table.mark_acked(start, end)

    async def check_main_position(self, position: int) -> None:
        # The oldest unclaimed row must be the next one, and the window before the position must be acked.
        first_unclaimed = self.table.first_unclaimed()
        window_start = max(position - self.settings.window, 0)
        acked = self.table.count_acked(window_start, position)
        if first_unclaimed not in (position, None) or acked != position - window_start:
            raise RuntimeError(f"the sqlite queue should be at message {position}, but its oldest unclaimed "
                               f"message is {first_unclaimed} and {acked} of the {position - window_start} "
                               f"messages from {window_start} are acked")

    async def prepare_child(self, role: str, position: int) -> None:
        self.table.unclaim_from(position)

    async def finish_size(self, size: int) -> None:
        self.table.mark_acked(size - self.settings.window, size)
        await self.check_main_position(size)

    def child_spec(self, role: str) -> dict[str, Any]:
        return {
            "engine": "sqlite", "role": role, "path": str(self.path), "count": self.settings.window,
            "batch_size": self.settings.batch_size, "transaction_rows": self.settings.sqlite_transaction_rows,
        }


def make_engine(name: str, directory: Path, settings: Settings) -> Engine:
    """Return the engine called `name` ("logq" or "sqlite") on `directory`."""
    if name == "logq":
        return LogqEngine(directory, settings)
    if name == "sqlite":
        return SqliteEngine(directory, settings)
    raise ValueError(f"unknown engine {name!r}; use one of {', '.join(ENGINES)}")
