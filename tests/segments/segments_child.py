"""Child process for the tests of logq.segments that need a second, real process.

Usage:

    python segments_child.py produce DIRECTORY SEGMENT_BYTES
        Append one record at a time with fsync="always" until killed, and
        print each offset that append returned, one per line.
    python segments_child.py hold-lock DIRECTORY
        Take the data-directory lock, print "locked", and hold it until killed
        or until standard input closes.
    python segments_child.py try-lock DIRECTORY
        Try to take the lock; print the DataDirLockedError message and exit
        with code 3 when another process holds it, or print "locked".
    python segments_child.py read-concurrently DIRECTORY
        Write zstd batches, reopen the log so nothing is cached, run many
        reads at once in worker threads, and exit with code 1 on a wrong value.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from pathlib import Path

from logq.errors import DataDirLockedError
from logq.segments import CODEC_ZSTD, DataDirLock, LogConfig, PartitionLog, RecordInput


def value_for(offset: int) -> bytes:
    """Return the value that the producer stores at `offset`, 32 to 128 bytes long."""
    return hashlib.sha256(str(offset).encode()).digest() * (1 + offset % 4)


async def produce(directory: Path, segment_bytes: int) -> None:
    log = await PartitionLog.open(directory, LogConfig(fsync="always", segment_bytes=segment_bytes))
    while True:
        offset = log.log_end_offset
        base_offset, _ = await log.append([RecordInput(value=value_for(offset))])
        if base_offset != offset:
            raise SystemExit(f"append returned offset {base_offset}, expected {offset}")
        print(base_offset, flush=True)


def hold_lock(directory: Path) -> None:
    lock = DataDirLock(directory)
    lock.acquire()
    print("locked", flush=True)
    sys.stdin.read()
    lock.release()


def try_lock(directory: Path) -> int:
    lock = DataDirLock(directory)
    try:
        lock.acquire()
    except DataDirLockedError as exc:
        print(exc, flush=True)
        return 3
    print("locked", flush=True)
    lock.release()
    return 0


async def read_concurrently(directory: Path) -> int:
    # Batches of about 1 MiB before compression keep several worker threads
    # inside zstd decompression at the same time.
    config = LogConfig(fsync="never", codec=CODEC_ZSTD, segment_bytes=256 * 1024)
    log = await PartitionLog.open(directory, config)
    for batch in range(40):
        await log.append([RecordInput(value=large_value_for(batch * 20 + number)) for number in range(20)])
    await log.close()

    log = await PartitionLog.open(directory, config)
    offsets = [(number * 7919) % log.log_end_offset for number in range(600)]
    results = await asyncio.gather(*(log.read(offset, max_bytes=1) for offset in offsets))
    await log.close()
    wrong = [
        offset
        for offset, records in zip(offsets, results)
        if records[0].offset != offset
        or [record.value for record in records] != [large_value_for(record.offset) for record in records]
    ]
    print(f"{len(wrong)} of {len(offsets)} reads returned wrong records: {wrong[:10]}", flush=True)
    return 1 if wrong else 0


def large_value_for(offset: int) -> bytes:
    """Return a compressible value of 12.8 to 51.2 KiB for `offset`."""
    return value_for(offset) * 400


def main(arguments: list[str]) -> int:
    command, directory = arguments[0], Path(arguments[1])
    if command == "produce":
        asyncio.run(produce(directory, int(arguments[2])))
    elif command == "hold-lock":
        hold_lock(directory)
    elif command == "try-lock":
        return try_lock(directory)
    elif command == "read-concurrently":
        return asyncio.run(read_concurrently(directory))
    else:
        raise SystemExit(f"unknown command {command!r}; see the module docstring")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
