"""Tests of the sparse offset and time indexes and of their file checks."""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from logq.errors import CorruptIndexError
from logq.segments.indexes import OFFSET_ENTRY, TIME_ENTRY, OffsetIndex, TimeIndex

BASE_OFFSET = 100
OFFSET_INDEX_NAME = "00000000000000000100.index"
TIME_INDEX_NAME = "00000000000000000100.timeindex"
SEGMENT_SIZE = 10_000
NEXT_BASE_OFFSET = 200


@pytest.fixture
def offset_index(tmp_path: Path) -> OffsetIndex:
    index = OffsetIndex(tmp_path / OFFSET_INDEX_NAME, BASE_OFFSET)
    index.append(100, 0)
    index.append(110, 4096)
    index.append(125, 9000)
    return index


@pytest.fixture
def time_index(tmp_path: Path) -> TimeIndex:
    index = TimeIndex(tmp_path / TIME_INDEX_NAME, BASE_OFFSET)
    index.append(1000, 100)
    index.append(1010, 110)
    index.append(1020, 125)
    return index


@pytest.mark.parametrize(
    ("offset", "position"),
    [(99, 0), (100, 0), (109, 0), (110, 4096), (124, 4096), (125, 9000), (10**9, 9000)],
    ids=["below base", "first entry", "before second", "second entry", "before third", "last entry", "far above"],
)
def test_offset_index_lookup(offset_index: OffsetIndex, offset: int, position: int) -> None:
    assert offset_index.lookup(offset) == position


def test_offset_index_lookup_when_empty(tmp_path: Path) -> None:
    index = OffsetIndex(tmp_path / OFFSET_INDEX_NAME, BASE_OFFSET)

    assert index.lookup(150) == 0


def test_offset_index_round_trip(offset_index: OffsetIndex, tmp_path: Path) -> None:
    offset_index.write_pending()
    loaded = OffsetIndex(tmp_path / OFFSET_INDEX_NAME, BASE_OFFSET)

    loaded.load(SEGMENT_SIZE, NEXT_BASE_OFFSET)

    assert loaded.offsets == [100, 110, 125]
    assert loaded.positions == [0, 4096, 9000]
    assert loaded.lookup(111) == 4096


def test_offset_index_file_stores_relative_offsets(offset_index: OffsetIndex, tmp_path: Path) -> None:
    offset_index.write_pending()

    data = (tmp_path / OFFSET_INDEX_NAME).read_bytes()

    assert list(OFFSET_ENTRY.iter_unpack(data)) == [(0, 0), (10, 4096), (25, 9000)]


def test_offset_index_write_pending_appends_new_entries(offset_index: OffsetIndex, tmp_path: Path) -> None:
    offset_index.write_pending()
    offset_index.write_pending()
    offset_index.append(150, 9500)
    offset_index.write_pending()

    data = (tmp_path / OFFSET_INDEX_NAME).read_bytes()

    assert len(data) == 4 * OFFSET_ENTRY.size
    assert OFFSET_ENTRY.unpack_from(data, 3 * OFFSET_ENTRY.size) == (50, 9500)


def test_offset_index_rewrite_replaces_file(offset_index: OffsetIndex, tmp_path: Path) -> None:
    (tmp_path / OFFSET_INDEX_NAME).write_bytes(b"\xff" * 20)

    offset_index.rewrite()

    assert (tmp_path / OFFSET_INDEX_NAME).read_bytes() == b"".join(
        OFFSET_ENTRY.pack(relative, position) for relative, position in [(0, 0), (10, 4096), (25, 9000)]
    )


def offset_entries(*entries: tuple[int, int]) -> bytes:
    return b"".join(OFFSET_ENTRY.pack(relative, position) for relative, position in entries)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"\x00" * 12, "size 12 is not a multiple of 8", id="size not multiple of 8"),
        pytest.param(b"\x00" * 7, "size 7 is not a multiple of 8", id="shorter than one entry"),
        pytest.param(offset_entries((0, 0), (10, 100), (5, 200)), "entry 2 .* not above", id="offsets out of order"),
        pytest.param(offset_entries((0, 0), (10, 300), (20, 200)), "entry 2 .* not above", id="positions out of order"),
        pytest.param(offset_entries((0, 0), (0, 0)), "entry 1 .* not above", id="repeated entry"),
        pytest.param(offset_entries((0, 0), (10, SEGMENT_SIZE)), "entry 1 .* past the segment", id="position past segment"),
        pytest.param(offset_entries((0, 0), (100, 500)), "entry 1 .* past the segment", id="offset in next segment"),
        pytest.param(b"\xff" * 16, "past the segment", id="all ones"),
    ],
)
def test_offset_index_load_rejects(tmp_path: Path, data: bytes, message: str) -> None:
    (tmp_path / OFFSET_INDEX_NAME).write_bytes(data)
    index = OffsetIndex(tmp_path / OFFSET_INDEX_NAME, BASE_OFFSET)

    with pytest.raises(CorruptIndexError, match=message) as caught:
        index.load(SEGMENT_SIZE, NEXT_BASE_OFFSET)

    assert str(caught.value).startswith(OFFSET_INDEX_NAME)


def test_offset_index_load_rejects_missing_file(tmp_path: Path) -> None:
    index = OffsetIndex(tmp_path / OFFSET_INDEX_NAME, BASE_OFFSET)

    with pytest.raises(CorruptIndexError, match=f"{OFFSET_INDEX_NAME}: missing"):
        index.load(SEGMENT_SIZE, NEXT_BASE_OFFSET)


def test_offset_index_failed_load_keeps_entries(offset_index: OffsetIndex, tmp_path: Path) -> None:
    (tmp_path / OFFSET_INDEX_NAME).write_bytes(b"\x00" * 3)

    with pytest.raises(CorruptIndexError):
        offset_index.load(SEGMENT_SIZE, NEXT_BASE_OFFSET)

    assert offset_index.offsets == [100, 110, 125]


def write_during_appends(index: OffsetIndex | TimeIndex, append_one: Callable[[], None]) -> bytes:
    """Race `write_pending` against appends from another thread; return the bytes written.

    The partition log writes pending entries in one worker thread while an
    append indexes the next batch in another. Here the index file is a FIFO
    that a reader drains only after a pause, so the first write blocks with
    more than a pipe buffer of entries (64 KiB) while the other thread appends.
    """
    os.mkfifo(index.path)
    received = bytearray()
    first_drained = threading.Event()

    def drain_twice() -> None:
        for pause in (0.2, 0.0):
            with open(index.path, "rb") as pipe:
                time.sleep(pause)
                received.extend(pipe.read())
            first_drained.set()

    reader = threading.Thread(target=drain_twice, daemon=True)
    reader.start()
    for _ in range(10_000):
        append_one()
    stop = threading.Event()

    def append_until_stopped() -> None:
        while not stop.is_set():
            append_one()

    appender = threading.Thread(target=append_until_stopped)
    appender.start()
    index.write_pending()
    stop.set()
    appender.join()
    # One more entry makes sure the second write opens the FIFO for the reader.
    # The write must wait until the reader closed its first end: a writer that
    # opens while that end is still open writes into a pipe about to be dropped.
    append_one()
    assert first_drained.wait(10)
    index.write_pending()
    reader.join(timeout=10)
    return bytes(received)


def test_offset_index_write_pending_during_appends(tmp_path: Path) -> None:
    index = OffsetIndex(tmp_path / OFFSET_INDEX_NAME, BASE_OFFSET)

    def append_one() -> None:
        index.append(BASE_OFFSET + len(index.offsets), len(index.offsets))

    written = write_during_appends(index, append_one)

    relative_offsets = [relative for relative, _ in OFFSET_ENTRY.iter_unpack(written)]
    assert len(index.offsets) > 10_001
    assert relative_offsets == list(range(len(index.offsets)))


@pytest.mark.parametrize(
    ("timestamp_ms", "offset"),
    [(999, 100), (1000, 100), (1001, 100), (1010, 100), (1011, 110), (1020, 110), (1021, 125), (10**15, 125)],
    ids=[
        "before first", "at first", "after first", "at second", "after second", "at third", "after third", "far later",
    ],
)
def test_time_index_lookup(time_index: TimeIndex, timestamp_ms: int, offset: int) -> None:
    assert time_index.lookup(timestamp_ms) == offset


def test_time_index_skips_repeated_timestamp(time_index: TimeIndex) -> None:
    time_index.append(1020, 130)
    time_index.append(1015, 140)

    assert time_index.timestamps == [1000, 1010, 1020]
    assert time_index.offsets == [100, 110, 125]


def test_time_index_max_timestamp(time_index: TimeIndex, tmp_path: Path) -> None:
    empty = TimeIndex(tmp_path / "empty.timeindex", BASE_OFFSET)

    assert time_index.max_timestamp_ms == 1020
    assert empty.max_timestamp_ms is None


def test_time_index_round_trip(time_index: TimeIndex, tmp_path: Path) -> None:
    time_index.write_pending()
    loaded = TimeIndex(tmp_path / TIME_INDEX_NAME, BASE_OFFSET)

    loaded.load(NEXT_BASE_OFFSET)

    assert loaded.timestamps == [1000, 1010, 1020]
    assert loaded.offsets == [100, 110, 125]
    assert loaded.lookup(1015) == 110


def test_time_index_file_stores_relative_offsets(time_index: TimeIndex, tmp_path: Path) -> None:
    time_index.write_pending()

    data = (tmp_path / TIME_INDEX_NAME).read_bytes()

    assert list(TIME_ENTRY.iter_unpack(data)) == [(1000, 0), (1010, 10), (1020, 25)]


def time_entries(*entries: tuple[int, int]) -> bytes:
    return b"".join(TIME_ENTRY.pack(timestamp, relative) for timestamp, relative in entries)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"\x00" * 16, "size 16 is not a multiple of 12", id="size not multiple of 12"),
        pytest.param(b"\x00" * 8, "size 8 is not a multiple of 12", id="offset entry size"),
        pytest.param(time_entries((1000, 0), (999, 10)), "entry 1 .* not above", id="timestamps out of order"),
        pytest.param(time_entries((1000, 10), (1010, 5)), "entry 1 .* not above", id="offsets out of order"),
        pytest.param(time_entries((1000, 0), (1000, 10)), "entry 1 .* not above", id="repeated timestamp"),
        pytest.param(time_entries((1000, 0), (1010, 100)), "entry 1 points at offset 200", id="offset in next segment"),
        pytest.param(struct.pack(">qI", -1, 2**32 - 1), "entry 0 points at offset", id="all ones"),
    ],
)
def test_time_index_load_rejects(tmp_path: Path, data: bytes, message: str) -> None:
    (tmp_path / TIME_INDEX_NAME).write_bytes(data)
    index = TimeIndex(tmp_path / TIME_INDEX_NAME, BASE_OFFSET)

    with pytest.raises(CorruptIndexError, match=message) as caught:
        index.load(NEXT_BASE_OFFSET)

    assert str(caught.value).startswith(TIME_INDEX_NAME)


def test_time_index_load_rejects_missing_file(tmp_path: Path) -> None:
    index = TimeIndex(tmp_path / TIME_INDEX_NAME, BASE_OFFSET)

    with pytest.raises(CorruptIndexError, match=f"{TIME_INDEX_NAME}: missing"):
        index.load(NEXT_BASE_OFFSET)


def test_time_index_write_pending_during_appends(tmp_path: Path) -> None:
    index = TimeIndex(tmp_path / TIME_INDEX_NAME, BASE_OFFSET)

    def append_one() -> None:
        index.append(1000 + len(index.offsets), BASE_OFFSET + len(index.offsets))

    written = write_during_appends(index, append_one)

    relative_offsets = [relative for _, relative in TIME_ENTRY.iter_unpack(written)]
    assert len(index.offsets) > 10_001
    assert relative_offsets == list(range(len(index.offsets)))
