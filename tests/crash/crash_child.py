"""Child workload of the crash matrix: producers and consumers that run until SIGKILL.

Usage:

    python crash_child.py DATA_DIR SIDE_LOG ROUND SEED

The child prints "started" once imported, opens DATA_DIR, creates the topics and groups on first use, and
runs sessions until the parent kills it. A session opens the log, runs
producer and consumer tasks for a seeded number of steps, and closes the log
cleanly, so kills also land in close-time snapshots and in recovery on open.

Every result that logq acknowledged is appended to SIDE_LOG, one line per
result, after the call returned and before the task goes on:

    S TOPIC OFFSET STREAM SEQ      a send returned OFFSET for record SEQ of STREAM
    D GROUP TOPIC OFFSET COUNT     a receive returned OFFSET with delivery count COUNT
    A GROUP TOPIC OFFSET           an ack of OFFSET returned
    P PHASE                        the session reached PHASE: "opened" (recovery done),
                                   "closing" (close started) or "closed"

Each line goes out in one os.write on an O_APPEND descriptor, so a kill
leaves whole lines only. The lines are not fsynced: the harness kills
processes and never the machine, so the page cache keeps every completed write.

Only partition 0 exists in every topic. The settings below make rolls,
retention, index writes, priority index checkpoints and group snapshots happen
every few dozen operations.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import sys
from pathlib import Path

import logq
from logq.consumers import journal

# Topic "events" uses fsync="always", so every send that returned must survive.
# Topic "bulk" uses fsync="interval" with zstd batches. A process crash must not
# lose its sends either, because written bytes stay in the page cache.
TOPIC_SETTINGS: dict[str, dict[str, object]] = {
    "events": {"segment_bytes": 4096, "fsync": "always", "retention_bytes": 16384},
    "bulk": {"segment_bytes": 4096, "fsync": "interval", "fsync_interval_ms": 5, "compression": "zstd",
             "retention_bytes": 24576},
}
# Group "workers" acks, nacks and abandons messages of "events", and group
# "readers" acks every message of "bulk".
GROUPS: dict[str, str] = {"workers": "events", "readers": "bulk"}
GROUP_SETTINGS: dict[str, dict[str, object]] = {"workers": {"max_deliveries": 3}, "readers": {}}
# Journal events between snapshots, instead of the default 10,000.
SNAPSHOT_EVERY = 15
# Journal segment size, instead of the default 1 MiB, so snapshots delete journal segments.
JOURNAL_SEGMENT_BYTES = 4096
MAX_BATCH = 5


def encode_value(stream: str, seq: int) -> bytes:
    """Return the value of record `seq` of `stream`: a header and a checksum filler, 40 to 300 bytes."""
    prefix = f"{stream}:{seq}:".encode()
    filler = hashlib.sha256(prefix).hexdigest().encode()
    length = 40 + (seq * 37 + len(stream) * 11) % 260
    return (prefix + filler * (1 + length // len(filler)))[:max(length, len(prefix))]


def decode_value(value: bytes) -> tuple[str, int]:
    """Return (stream, seq) of a value written by `encode_value`. Raise ValueError for any other value."""
    stream, seq_text, _ = value.split(b":", 2)
    seq = int(seq_text)
    if encode_value(stream.decode(), seq) != value:
        raise ValueError(f"value {value[:60]!r} does not match the value of {stream.decode()}:{seq}")
    return stream.decode(), seq


class SideLog:
    """Append-only record of what logq acknowledged, written with one os.write per line."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def note(self, *fields: object) -> None:
        """Append one line of space-separated `fields`."""
        os.write(self._fd, (" ".join(str(field) for field in fields) + "\n").encode())


async def produce(log: logq.Log, side_log: SideLog, topic: str, stream: str, rng: random.Random,
                  steps: int) -> None:
    """Send `steps` sends or batches of stream `stream`, noting each offset once the send returned."""
    seq = 0
    for _ in range(steps):
        count = 1 if rng.random() < 0.6 else rng.randint(2, MAX_BATCH)
        values = [encode_value(stream, seq + number) for number in range(count)]
        priority = rng.choice((0, 0, 0, 1, 2)) if topic == "events" else 0
        offsets = await log.send_batch(topic, values, priority=priority)
        for number, offset in enumerate(offsets):
            side_log.note("S", topic, offset, stream, seq + number)
        seq += count
        await asyncio.sleep(0)


async def nack(consumer: logq.Consumer, message: logq.Message) -> None:
    """Nack `message`."""
    await consumer.nack(message)


async def consume(log: logq.Log, side_log: SideLog, group: str, rng: random.Random, steps: int) -> None:
    """Receive and handle messages for `steps` receives, noting deliveries and returned acks."""
    topic = GROUPS[group]
    async with log.consumer(topic, group=group, auto_ack=False) as consumer:
        for _ in range(steps):
            messages = await consumer.receive(rng.randint(1, 8), timeout=0.005)
            for message in messages:
                side_log.note("D", group, topic, message.offset, message.delivery_count)
            if group == "readers":
                to_ack = messages
            else:
                to_ack = []
                for message in messages:
                    choice = rng.random()
                    if choice < 0.75:
                        to_ack.append(message)
                    elif choice < 0.92:
                        await nack(consumer, message)
                    # Otherwise the lease stays until the consumer closes or the process dies.
            if to_ack:
                await consumer.ack_batch(to_ack)
                for message in to_ack:
                    side_log.note("A", group, topic, message.offset)


async def prepare(log: logq.Log) -> None:
    """Create the topics and configure the groups that do not exist yet, and shorten snapshot intervals."""
    for topic, settings in TOPIC_SETTINGS.items():
        if topic not in log.list_topics():
            await log.create_topic(topic, **settings)
    existing = log.list_groups()
    for group, settings in GROUP_SETTINGS.items():
        if group not in existing and settings:
            await log.configure_group(group, **settings)
        (await log.group(group)).journal.snapshot_every = SNAPSHOT_EVERY


async def run_session(directory: str, side_log: SideLog, stream_prefix: str, rng: random.Random) -> None:
    """Open the log, run producers and consumers concurrently for seeded step counts, close it."""
    group_fsync = rng.choice(("always", "interval"))
    log = await logq.open(directory, group_fsync=group_fsync)
    try:
        await prepare(log)
        side_log.note("P", "opened")
        tasks = [
            produce(log, side_log, "events", f"{stream_prefix}p0", random.Random(rng.random()), rng.randint(2, 30)),
            produce(log, side_log, "events", f"{stream_prefix}p1", random.Random(rng.random()), rng.randint(2, 30)),
            produce(log, side_log, "bulk", f"{stream_prefix}p2", random.Random(rng.random()), rng.randint(2, 30)),
            consume(log, side_log, "workers", random.Random(rng.random()), rng.randint(2, 30)),
            consume(log, side_log, "readers", random.Random(rng.random()), rng.randint(2, 30)),
        ]
        await asyncio.gather(*tasks)
    finally:
        side_log.note("P", "closing")
        await log.close()
        side_log.note("P", "closed")


async def main(directory: str, side_log_path: str, round_number: int, seed: int) -> None:
    """Run sessions one after another until the process is killed."""
    journal.JOURNAL_SEGMENT_BYTES = JOURNAL_SEGMENT_BYTES  # type: ignore[misc]
    side_log = SideLog(side_log_path)
    # The parent starts its kill timer on this line, so no kill lands in interpreter start-up.
    print("started", flush=True)
    rng = random.Random(seed)
    for session in range(1_000_000):
        await run_session(directory, side_log, f"r{round_number}s{session}", rng)


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    logging.disable(logging.CRITICAL)
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
