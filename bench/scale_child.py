"""Child-process measurements of bench.scale, and the sqlite3 queue table that keeps acked rows.

bench.scale runs `python -m bench.scale_child SPEC` once for each reopen and
memory measurement, so that each one starts in a fresh interpreter. SPEC is a
JSON object with the keys `engine` ("logq" or "sqlite"), `role` ("reopen",
"in-flight" or "ack-holes"), `path`, `count`, `batch_size` and, for logq,
`topic`, `group` and `receive_timeout`, or, for sqlite,
`transaction_rows`. An optional `profile_path` makes the reopen role write
cProfile statistics of the open and the first receive, from every thread,
to that file.

The child prints one JSON object on stdout:

- `rss_before_open_kib`: VmRSS after the imports, before the data is opened;
- `open_seconds`: `logq.open`, or `sqlite3.connect` and the two pragmas;
- `rss_after_open_kib`: VmRSS right after the open;
- role "reopen": `first_receive_seconds`, the time of the open plus that of
  the first receive of one message (the RSS reading between them is left
  out), `first_offset`, and `rss_after_first_kib`;
- roles "in-flight" and "ack-holes": `received`, `acked`, `receive_seconds`
  and `rss_after_receive_kib` and `hwm_after_receive_kib` (VmHWM, the peak
  RSS of the child so far) once all messages are received;
- `close_seconds`: closing the log or the connection, after every reading.

Role "in-flight" receives `count` messages in receives of `batch_size`
without acking them, under a lease longer than the run. Role "ack-holes"
does the same but acks every other message of each receive, so half of them
stay in flight between acked ones. Neither keeps a reference to a received
batch after handling it, so the RSS they gain is the engine's state plus
what the allocator kept of freed memory, not the application's copies of
the messages.

RSS values come from /proc/self/status and are None where it does not exist.
The child imports the same modules for both engines, so their RSS values
start from the same interpreter.
"""

from __future__ import annotations

import asyncio
import cProfile
import json
import pstats
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import logq
from bench.peers.sqlite_queue import CLAIM, CONSUMER_NAME, SCHEMA, SYNCHRONOUS, chunks

# Longer than any run, so that no in-flight message expires while the child measures.
LEASE_SECONDS = 3600.0

# Partial index over the rows no consumer has claimed. The claim statement of
# the sqlite peer selects `WHERE claimed_by IS NULL ORDER BY id`. Without this
# index that scan passes every acked row, which this table keeps.
UNCLAIMED_INDEX = "CREATE INDEX queue_unclaimed ON queue (id) WHERE claimed_by IS NULL"

# `claimed_by` of the rows that bench.scale marks acked in bulk, without a consumer.
BULK_ACK_OWNER = "bench-scale-bulk"


class RetainingSqliteQueue:
    """The sqlite peer's queue table and SQL, except that an ack marks its row acked and keeps it.

    The sqlite peer of bench.compare deletes a row when it is acked, so its
    table contains only the messages not yet acked. This table contains every
    message sent, as logq's log does: an ack sets `acked_at`, and a partial
    index over the unclaimed rows lets the peer's claim statement skip the
    acked ones. Message n (counted from 0) is the row with id n + 1.

    Inserts and claims run the peer's SQL (`SCHEMA`, `CLAIM`) with the same
    pragmas and the same transactions of at most `transaction_rows` rows as
    `SqliteQueueTable`. This is not a subclass of it, because that class
    creates the table in its constructor and so cannot open an existing
    database, which the reopen children need.
    """

    def __init__(self, path: Path, transaction_rows: int, *, create: bool) -> None:
        # isolation_level=None leaves transactions to the explicit BEGIN and COMMIT below.
        self._connection = sqlite3.connect(path, isolation_level=None)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute(f"PRAGMA synchronous={SYNCHRONOUS['interval']}")
        self._transaction_rows = transaction_rows
        if create:
            self._connection.execute(SCHEMA)
            self._connection.execute("ALTER TABLE queue ADD COLUMN acked_at REAL")
            self._connection.execute(UNCLAIMED_INDEX)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """Run the block in BEGIN IMMEDIATE ... COMMIT, or ROLLBACK when it raises."""
        self._connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._connection.execute("ROLLBACK")
            raise
        self._connection.execute("COMMIT")

    def send_batch(self, values: list[bytes]) -> None:
        """Insert one row per value."""
        for chunk in chunks(values, self._transaction_rows):
            with self._transaction():
                self._connection.executemany("INSERT INTO queue (payload) VALUES (?)", [(value,) for value in chunk])

    def receive(self, max_messages: int) -> list[tuple[int, bytes]]:
        """Claim up to `max_messages` of the oldest unclaimed rows; return their ids and payloads."""
        rows: list[tuple[int, bytes]] = []
        while len(rows) < max_messages:
            limit = min(self._transaction_rows, max_messages - len(rows))
            with self._transaction():
                claimed = self._connection.execute(CLAIM, (CONSUMER_NAME, time.time(), limit)).fetchall()
            rows.extend(claimed)
            if len(claimed) < limit:
                break
        return rows

    def ack_batch(self, messages: Sequence[tuple[int, bytes]]) -> None:
        """Mark the rows of `messages` acked."""
        now = time.time()
        for chunk in chunks(messages, self._transaction_rows):
            placeholders = ",".join("?" * len(chunk))
            with self._transaction():
                self._connection.execute(
                    f"UPDATE queue SET acked_at = ? WHERE id IN ({placeholders})", [now, *(row[0] for row in chunk)]
                )

    def mark_acked(self, start: int, end: int, *, rows_per_transaction: int = 100_000) -> None:
        """Mark messages start..end-1 claimed and acked, as if a consumer had processed them.

        Each transaction updates at most `rows_per_transaction` rows, which
        bounds the size of the write-ahead log.
        """
        now = time.time()
        for low in range(start, end, rows_per_transaction):
            high = min(low + rows_per_transaction, end)
            with self._transaction():
                self._connection.execute(
                    "UPDATE queue SET claimed_by = ?, claimed_at = ?, acked_at = ? WHERE id > ? AND id <= ?",
                    (BULK_ACK_OWNER, now, now, low, high),
                )

    def unclaim_from(self, start: int) -> None:
        """Make every message from `start` on unclaimed and not acked, so a consumer receives it again."""
        with self._transaction():
            self._connection.execute(
                "UPDATE queue SET claimed_by = NULL, claimed_at = NULL, acked_at = NULL WHERE id > ?", (start,)
            )

    def first_unclaimed(self) -> int | None:
        """Return the position of the oldest unclaimed message, or None when every row is claimed."""
        row_id = self._connection.execute("SELECT min(id) FROM queue WHERE claimed_by IS NULL").fetchone()[0]
        return None if row_id is None else row_id - 1

    def count_acked(self, start: int, end: int) -> int:
        """Return how many of the messages start..end-1 are acked."""
        cursor = self._connection.execute(
            "SELECT count(*) FROM queue WHERE id > ? AND id <= ? AND acked_at IS NOT NULL", (start, end))
        return int(cursor.fetchone()[0])

    def close(self) -> None:
        """Close the connection."""
        self._connection.close()


class ThreadProfiles:
    """cProfile of the calling thread and of every thread it starts while profiling, saved as one file.

    logq runs file reads, recovery and fsyncs in worker threads, which a
    cProfile of the event loop's thread shows only as time spent waiting.
    """

    def __init__(self) -> None:
        self._profiles: list[cProfile.Profile] = []

    def _enable_in_new_thread(self, *event: object) -> None:
        # threading.setprofile installs this as the profile function of each
        # new thread. Its first call replaces it with a profiler for that thread.
        profile = cProfile.Profile()
        self._profiles.append(profile)
        profile.enable()

    def start(self) -> None:
        """Profile this thread and every thread started from now on."""
        threading.setprofile(self._enable_in_new_thread)
        profile = cProfile.Profile()
        self._profiles.insert(0, profile)
        profile.enable()

    def stop_and_save(self, path: str) -> None:
        """Stop profiling and write the statistics of all threads, merged, to `path`.

        NOTE: worker threads that are still alive keep their profiler until
        they end. Their statistics are taken as of this call, which suits a
        child that exits right after.
        """
        self._profiles[0].disable()
        threading.setprofile(None)  # type: ignore[arg-type]
        stats = pstats.Stats(self._profiles[0])
        for profile in self._profiles[1:]:
            stats.add(profile)
        stats.dump_stats(path)


def read_memory_kib() -> tuple[int | None, int | None]:
    """Return VmRSS and VmHWM of this process in KiB from /proc/self/status, or None where it is missing."""
    values: dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                name, _, rest = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    values[name] = int(rest.split()[0])
    except OSError:
        return None, None
    return values.get("VmRSS"), values.get("VmHWM")


def read_rss_kib() -> int | None:
    """Return VmRSS of this process in KiB, or None where /proc/self/status is missing."""
    return read_memory_kib()[0]


# -- logq ------------------------------------------------------------------------------------


async def logq_reopen(spec: dict[str, Any]) -> dict[str, Any]:
    """Time `logq.open` and the first receive of an existing group, and read the RSS after each.

    The received message is not acked. Closing the log releases its lease,
    so the group receives it again, as the next message, after this child.
    """
    result: dict[str, Any] = {"rss_before_open_kib": read_rss_kib()}
    profiler = ThreadProfiles() if spec.get("profile_path") else None
    if profiler is not None:
        profiler.start()
    start = time.perf_counter()
    log = await logq.open(spec["path"])
    opened = time.perf_counter()
    result["rss_after_open_kib"] = read_rss_kib()
    resumed = time.perf_counter()
    consumer = log.consumer(spec["topic"], group=spec["group"], auto_ack=False)
    batch = await consumer.receive(1, timeout=spec["receive_timeout"])
    first = time.perf_counter()
    if profiler is not None:
        profiler.stop_and_save(spec["profile_path"])
    if len(batch) != 1:
        await log.close()
        raise RuntimeError(f"the first receive of group {spec['group']!r} returned no message within "
                           f"{spec['receive_timeout']} s, although bench.scale left messages for it")
    result.update(
        open_seconds=opened - start,
        first_receive_seconds=(opened - start) + (first - resumed),
        first_offset=batch[0].offset,
        rss_after_first_kib=read_rss_kib(),
    )
    closing = time.perf_counter()
    await log.close()
    result["close_seconds"] = time.perf_counter() - closing
    return result


async def logq_in_flight(spec: dict[str, Any], *, ack_every_other: bool) -> dict[str, Any]:
    """Receive `count` messages without acking them, or acking every other one, and read the RSS."""
    result: dict[str, Any] = {"rss_before_open_kib": read_rss_kib()}
    start = time.perf_counter()
    log = await logq.open(spec["path"])
    result["open_seconds"] = time.perf_counter() - start
    result["rss_after_open_kib"] = read_rss_kib()
    consumer = log.consumer(spec["topic"], group=spec["group"], auto_ack=False)
    received = acked = 0
    started = time.perf_counter()
    while received < spec["count"]:
        size = min(spec["batch_size"], spec["count"] - received)
        batch = await consumer.receive(size, timeout=spec["receive_timeout"], lease=LEASE_SECONDS)
        if not batch:
            await log.close()
            raise RuntimeError(f"group {spec['group']!r} received {received} of {spec['count']} messages, "
                               f"then none within {spec['receive_timeout']} s")
        received += len(batch)
        if ack_every_other:
            acked += await consumer.ack_batch(batch[1::2])
        del batch
    result["receive_seconds"] = time.perf_counter() - started
    result["received"] = received
    result["acked"] = acked
    result["rss_after_receive_kib"], result["hwm_after_receive_kib"] = read_memory_kib()
    closing = time.perf_counter()
    await log.close()
    result["close_seconds"] = time.perf_counter() - closing
    return result


# -- sqlite3 ---------------------------------------------------------------------------------


def sqlite_reopen(spec: dict[str, Any]) -> dict[str, Any]:
    """Time opening the database and claiming one row, and read the RSS after each.

    The claimed row stays claimed and not acked. bench.scale makes it unclaimed
    again after the reopen runs, because the peer's table has no lease expiry.
    """
    result: dict[str, Any] = {"rss_before_open_kib": read_rss_kib()}
    profiler = ThreadProfiles() if spec.get("profile_path") else None
    if profiler is not None:
        profiler.start()
    start = time.perf_counter()
    table = RetainingSqliteQueue(Path(spec["path"]), spec["transaction_rows"], create=False)
    opened = time.perf_counter()
    result["rss_after_open_kib"] = read_rss_kib()
    resumed = time.perf_counter()
    rows = table.receive(1)
    first = time.perf_counter()
    if profiler is not None:
        profiler.stop_and_save(spec["profile_path"])
    if len(rows) != 1:
        table.close()
        raise RuntimeError("the first claim returned no row, although bench.scale left unclaimed rows")
    result.update(
        open_seconds=opened - start,
        first_receive_seconds=(opened - start) + (first - resumed),
        first_offset=rows[0][0] - 1,
        rss_after_first_kib=read_rss_kib(),
    )
    closing = time.perf_counter()
    table.close()
    result["close_seconds"] = time.perf_counter() - closing
    return result


def sqlite_in_flight(spec: dict[str, Any], *, ack_every_other: bool) -> dict[str, Any]:
    """Claim `count` rows without acking them, or acking every other one, and read the RSS."""
    result: dict[str, Any] = {"rss_before_open_kib": read_rss_kib()}
    start = time.perf_counter()
    table = RetainingSqliteQueue(Path(spec["path"]), spec["transaction_rows"], create=False)
    result["open_seconds"] = time.perf_counter() - start
    result["rss_after_open_kib"] = read_rss_kib()
    received = acked = 0
    started = time.perf_counter()
    while received < spec["count"]:
        rows = table.receive(min(spec["batch_size"], spec["count"] - received))
        if not rows:
            table.close()
            raise RuntimeError(f"claimed {received} of {spec['count']} rows, then the table had no unclaimed row")
        received += len(rows)
        if ack_every_other:
            table.ack_batch(rows[1::2])
            acked += len(rows[1::2])
        del rows
    result["receive_seconds"] = time.perf_counter() - started
    result["received"] = received
    result["acked"] = acked
    result["rss_after_receive_kib"], result["hwm_after_receive_kib"] = read_memory_kib()
    closing = time.perf_counter()
    table.close()
    result["close_seconds"] = time.perf_counter() - closing
    return result


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the measurement that `spec` names and return its result; raises ValueError for an unknown one."""
    engine, role = spec.get("engine"), spec.get("role")
    if engine == "logq" and role == "reopen":
        return asyncio.run(logq_reopen(spec))
    if engine == "logq" and role in ("in-flight", "ack-holes"):
        return asyncio.run(logq_in_flight(spec, ack_every_other=role == "ack-holes"))
    if engine == "sqlite" and role == "reopen":
        return sqlite_reopen(spec)
    if engine == "sqlite" and role in ("in-flight", "ack-holes"):
        return sqlite_in_flight(spec, ack_every_other=role == "ack-holes")
    raise ValueError(f"unknown engine {engine!r} or role {role!r}; use logq or sqlite, and reopen, "
                     "in-flight or ack-holes")


def main(argv: list[str] | None = None) -> int:
    """Run the measurement described by the JSON object in the first argument and print its result as JSON."""
    arguments = sys.argv[1:] if argv is None else argv
    if len(arguments) != 1:
        print("usage: python -m bench.scale_child SPEC (a JSON object; bench.scale writes it)", file=sys.stderr)
        return 2
    print(json.dumps(run(json.loads(arguments[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
