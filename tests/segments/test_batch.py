"""Tests of the record batch format: round trip, CRC checks and damaged input."""

from __future__ import annotations

import random
import struct
import zlib

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logq.errors import CorruptRecordError
from logq.segments.batch import (
    CODEC_NONE,
    CODEC_ZSTD,
    CRC_START,
    HEADER_SIZE,
    LENGTH_FIELD_END,
    MAGIC,
    PlainRecords,
    Record,
    RecordInput,
    decode_records,
    encode_batch,
    encode_batch_with_header,
    iter_batches,
    parse_header,
    verify_batch,
)

TIMESTAMP_MS = 1_700_000_000_123
BASE_OFFSET = 1000
MIB = 1024 * 1024
CODECS = pytest.mark.parametrize("codec", [CODEC_NONE, CODEC_ZSTD], ids=["none", "zstd"])


def decode_checked(data: bytes) -> list[Record]:
    """Parse, CRC-check and decode the single batch in `data`."""
    header = parse_header(data)
    verify_batch(data, 0, header)
    return decode_records(data, 0, header)


def build_batch(payload: bytes, *, codec: int, record_count: int, base_offset: int = BASE_OFFSET) -> bytes:
    """Frame `payload` as a batch with a correct CRC, whatever the payload contains."""
    after_crc = struct.pack(">biqq", codec, record_count, TIMESTAMP_MS, TIMESTAMP_MS) + payload
    batch_length = len(after_crc) + CRC_START - LENGTH_FIELD_END
    return struct.pack(">qibI", base_offset, batch_length, MAGIC, zlib.crc32(after_crc)) + after_crc


def large_value(seed: int) -> bytes:
    """Return about 1 MiB of pseudo-random bytes that zstd cannot shrink much."""
    return random.Random(seed).randbytes(MIB + seed % 7)


small_values = st.binary(max_size=300)
values = st.one_of(small_values, st.just(b""), st.integers(0, 1000).map(large_value))
keys = st.one_of(
    st.none(),
    st.just(b""),
    st.binary(min_size=1, max_size=64),
    st.text(max_size=32).map(lambda text: text.encode("utf-8")),
)
header_items = st.lists(st.tuples(st.text(max_size=20), st.text(max_size=40)), max_size=5).map(tuple)
record_inputs = st.builds(
    RecordInput,
    value=values,
    key=keys,
    headers=header_items,
    priority=st.integers(0, 255),
    flags=st.integers(0, 255),
)


@CODECS
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(record_inputs, min_size=1, max_size=5), base_offset=st.integers(0, 2**62))
def test_batch_round_trip(codec: int, records: list[RecordInput], base_offset: int) -> None:
    data = encode_batch(base_offset, records, timestamp_ms=TIMESTAMP_MS, codec=codec)

    decoded = decode_checked(data)

    assert [record.offset for record in decoded] == list(range(base_offset, base_offset + len(records)))
    assert [record.value for record in decoded] == [record.value for record in records]
    assert [record.key for record in decoded] == [record.key for record in records]
    assert [record.headers for record in decoded] == [record.headers for record in records]
    assert [record.priority for record in decoded] == [record.priority for record in records]
    assert [record.flags for record in decoded] == [record.flags for record in records]
    assert {record.timestamp_ms for record in decoded} == {TIMESTAMP_MS}


@CODECS
@settings(max_examples=30, deadline=None)
@given(records=st.lists(st.builds(RecordInput, value=small_values, key=keys, headers=st.just(()),
                                  priority=st.integers(0, 255), flags=st.integers(0, 255)),
                        min_size=1, max_size=5))
def test_batch_header_fields(codec: int, records: list[RecordInput]) -> None:
    data = encode_batch(BASE_OFFSET, records, timestamp_ms=TIMESTAMP_MS, codec=codec)

    header = parse_header(data)

    assert header.base_offset == BASE_OFFSET
    assert header.size == len(data)
    assert header.record_count == len(records)
    assert header.last_offset == BASE_OFFSET + len(records) - 1
    assert header.next_offset == BASE_OFFSET + len(records)
    assert header.codec == codec
    assert header.first_timestamp_ms == TIMESTAMP_MS
    assert header.max_timestamp_ms == TIMESTAMP_MS
    assert encode_batch_with_header(BASE_OFFSET, records, timestamp_ms=TIMESTAMP_MS, codec=codec) == (data, header)


@given(values=st.lists(st.binary(max_size=300), min_size=1, max_size=20), priority=st.integers(0, 255))
def test_plain_records_encode_like_record_inputs(values: list[bytes], priority: int) -> None:
    plain = PlainRecords(values, priority)
    generic = [RecordInput(value=value, priority=priority) for value in values]

    assert list(plain) == generic
    assert list(plain[1:3]) == generic[1:3]
    assert encode_batch(BASE_OFFSET, plain, timestamp_ms=TIMESTAMP_MS) == encode_batch(
        BASE_OFFSET, generic, timestamp_ms=TIMESTAMP_MS
    )


def test_zstd_frame_declaring_huge_size_rejected() -> None:
    # A frame header (single segment, 8-byte content size) that declares 1 GiB, then the
    # blocks of a real frame. The batch around it has a valid CRC, as a collision would give.
    real = zstandard.ZstdCompressor(level=1).compress(b"\0" * 10)
    frame = real[:4] + bytes([0xE0]) + (1 << 30).to_bytes(8, "little") + real[6:]
    after_crc = struct.pack(">biqq", CODEC_ZSTD, 1, TIMESTAMP_MS, TIMESTAMP_MS) + frame
    data = struct.pack(">qibI", BASE_OFFSET, 5 + len(after_crc), MAGIC, zlib.crc32(after_crc)) + after_crc
    header = parse_header(data)
    verify_batch(data, 0, header)

    with pytest.raises(CorruptRecordError, match="does not decompress.*declares 1073741824 bytes"):
        decode_records(data, 0, header)


EDGE_CASES = [
    pytest.param([RecordInput(value=b"")], id="empty value"),
    pytest.param([RecordInput(value=b"v", key=b"")], id="empty key"),
    pytest.param([RecordInput(value=b"v", key=None)], id="no key"),
    pytest.param([RecordInput(value=b"\x00\xff" * 40, key=b"\x00\x01\xfe\xff")], id="binary key and value"),
    pytest.param([RecordInput(value=b"v", key="clé-日本-🔑".encode())], id="unicode key"),
    pytest.param([RecordInput(value=b"v", headers=(("", ""),))], id="empty header name and value"),
    pytest.param([RecordInput(value=b"v", headers=(("ключ", "値 ✓"), ("ключ", "again")))], id="unicode headers"),
    pytest.param([RecordInput(value=b"v", headers=(("h" * 65535, "x" * 70000),))], id="longest header name"),
    pytest.param([RecordInput(value=b"v", priority=255, flags=255)], id="max priority and flags"),
    pytest.param([RecordInput(value=large_value(1))], id="1 MiB random value"),
    pytest.param([RecordInput(value=b"a" * (4 * MIB))], id="4 MiB compressible value"),
    pytest.param([RecordInput(value=str(n).encode()) for n in range(5000)], id="5000 records"),
    pytest.param([RecordInput(value=b"", key=b"") for _ in range(3)], id="empty records"),
]


@CODECS
@pytest.mark.parametrize("records", EDGE_CASES)
def test_batch_edge_case_round_trip(codec: int, records: list[RecordInput]) -> None:
    data = encode_batch(BASE_OFFSET, records, timestamp_ms=TIMESTAMP_MS, codec=codec)

    decoded = decode_checked(data)

    assert len(decoded) == len(records)
    assert [record.value for record in decoded] == [record.value for record in records]
    assert [record.key for record in decoded] == [record.key for record in records]
    assert [record.headers for record in decoded] == [record.headers for record in records]
    assert [(record.priority, record.flags) for record in decoded] == [
        (record.priority, record.flags) for record in records
    ]


@pytest.mark.parametrize(
    "base_offset", [0, 1, 2**31, 2**62], ids=["zero", "one", "above int32", "2 to the 62"]
)
def test_batch_base_offset_range(base_offset: int) -> None:
    data = encode_batch(base_offset, [RecordInput(b"a"), RecordInput(b"b")], timestamp_ms=TIMESTAMP_MS)

    decoded = decode_checked(data)

    assert [record.offset for record in decoded] == [base_offset, base_offset + 1]


def test_encode_batch_rejects_no_records() -> None:
    with pytest.raises(ValueError, match="at least one record"):
        encode_batch(BASE_OFFSET, [], timestamp_ms=TIMESTAMP_MS)


def test_iter_batches_walks_consecutive_batches() -> None:
    first = encode_batch(0, [RecordInput(b"a"), RecordInput(b"b")], timestamp_ms=TIMESTAMP_MS)
    second = encode_batch(2, [RecordInput(b"c")], timestamp_ms=TIMESTAMP_MS, codec=CODEC_ZSTD)
    buffer = first + second

    found = list(iter_batches(buffer))

    assert [position for position, _ in found] == [0, len(first)]
    assert [header.base_offset for _, header in found] == [0, 2]


@pytest.mark.parametrize("cut", [1, HEADER_SIZE - 1, HEADER_SIZE, 10], ids=["1 byte", "header minus 1", "header", "10 bytes"])
def test_iter_batches_stops_before_cut_batch(cut: int) -> None:
    first = encode_batch(0, [RecordInput(b"a" * 20)], timestamp_ms=TIMESTAMP_MS)
    second = encode_batch(1, [RecordInput(b"b" * 20)], timestamp_ms=TIMESTAMP_MS)

    found = list(iter_batches(first + second[:cut]))

    assert [header.base_offset for _, header in found] == [0]


SAMPLE_RECORDS = [
    RecordInput(value=b"first value", key=b"key-1", headers=(("trace", "abc"),), priority=3),
    RecordInput(value=b"", key=None),
    RecordInput(value=bytes(range(256)), key="ключ".encode(), flags=1),
]


@CODECS
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_crc_rejects_flipped_bit(codec: int, data: st.DataObject) -> None:
    batch = bytearray(encode_batch(BASE_OFFSET, SAMPLE_RECORDS, timestamp_ms=TIMESTAMP_MS, codec=codec))
    # Damage from the length field on must be caught. The length, magic and CRC
    # fields fail the shape checks or change what the CRC covers, and the rest fails the CRC.
    position = data.draw(st.integers(LENGTH_FIELD_END - 4, len(batch) - 1), label="position")
    bit = data.draw(st.integers(0, 7), label="bit")
    batch[position] ^= 1 << bit

    with pytest.raises(CorruptRecordError):
        decode_checked(bytes(batch))


@CODECS
def test_crc_rejects_flipped_bit_after_crc_field(codec: int) -> None:
    original = encode_batch(BASE_OFFSET, SAMPLE_RECORDS, timestamp_ms=TIMESTAMP_MS, codec=codec)
    accepted = []
    for position in range(CRC_START, len(original)):
        batch = bytearray(original)
        batch[position] ^= 1 << (position % 8)
        try:
            decode_checked(bytes(batch))
        except CorruptRecordError:
            continue
        accepted.append(position)

    assert accepted == []


@CODECS
def test_parse_header_rejects_cut_batch(codec: int) -> None:
    batch = encode_batch(BASE_OFFSET, SAMPLE_RECORDS, timestamp_ms=TIMESTAMP_MS, codec=codec)
    accepted = []
    for length in range(len(batch)):
        try:
            decode_checked(batch[:length])
        except CorruptRecordError:
            continue
        accepted.append(length)

    assert accepted == []


def test_verify_batch_names_both_crc_values() -> None:
    batch = bytearray(encode_batch(BASE_OFFSET, SAMPLE_RECORDS, timestamp_ms=TIMESTAMP_MS))
    batch[-1] ^= 0x01
    header = parse_header(batch)

    with pytest.raises(CorruptRecordError) as caught:
        verify_batch(bytes(batch), 0, header)

    assert f"{header.crc:#010x}" in str(caught.value)
    assert "base offset 1000" in str(caught.value)


def test_parse_header_rejects_unknown_magic() -> None:
    batch = bytearray(encode_batch(BASE_OFFSET, SAMPLE_RECORDS, timestamp_ms=TIMESTAMP_MS))
    batch[LENGTH_FIELD_END] = MAGIC + 1

    with pytest.raises(CorruptRecordError, match="magic 2"):
        parse_header(bytes(batch))


def test_decode_records_rejects_unknown_codec() -> None:
    batch = build_batch(b"", codec=5, record_count=1)

    with pytest.raises(CorruptRecordError, match="unknown codec 5"):
        decode_checked(batch)


def test_decode_records_rejects_trailing_bytes() -> None:
    valid = encode_batch(BASE_OFFSET, [RecordInput(b"value")], timestamp_ms=TIMESTAMP_MS)
    batch = build_batch(valid[HEADER_SIZE:] + b"\x00", codec=CODEC_NONE, record_count=1)

    with pytest.raises(CorruptRecordError, match="follow the last record"):
        decode_checked(batch)


ZSTD_FRAME_MAGIC = bytes.fromhex("28b52ffd")


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"not a zstd frame", id="no frame magic"),
        pytest.param(ZSTD_FRAME_MAGIC + b"\x00", id="frame header cut"),
        # Frame header descriptor 0xE0: single segment, 8-byte content size.
        pytest.param(ZSTD_FRAME_MAGIC + b"\xe0" + struct.pack("<Q", 1 << 40) + b"\x01\x00\x00", id="1 TiB content size"),
        pytest.param(zstandard.ZstdCompressor().compress(b"x" * 100)[:-3], id="frame cut short"),
    ],
)
def test_decode_records_rejects_bad_zstd_payload(payload: bytes) -> None:
    batch = build_batch(payload, codec=CODEC_ZSTD, record_count=1)

    with pytest.raises(CorruptRecordError, match="does not decompress"):
        decode_checked(batch)


def decode_anything(buffer: bytes) -> None:
    """Run every reader on `buffer`; only CorruptRecordError may escape."""
    try:
        header = parse_header(buffer)
    except CorruptRecordError:
        return
    try:
        verify_batch(buffer, 0, header)
    except CorruptRecordError:
        pass
    try:
        decode_records(buffer, 0, header)
    except CorruptRecordError:
        pass
    try:
        list(iter_batches(buffer))
    except CorruptRecordError:
        pass


@settings(max_examples=300, deadline=None)
@given(buffer=st.binary(max_size=600))
def test_readers_reject_garbage(buffer: bytes) -> None:
    decode_anything(buffer)


@settings(max_examples=300, deadline=None)
@given(
    payload=st.binary(max_size=400),
    codec=st.integers(0, 7),
    record_count=st.integers(1, 2**31 - 1),
)
def test_decode_garbage_with_valid_crc(payload: bytes, codec: int, record_count: int) -> None:
    decode_anything(build_batch(payload, codec=codec, record_count=record_count))


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=400), record_count=st.integers(1, 20))
def test_decode_garbage_inside_zstd(payload: bytes, record_count: int) -> None:
    compressed = zstandard.ZstdCompressor().compress(payload)

    decode_anything(build_batch(compressed, codec=CODEC_ZSTD, record_count=record_count))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_decode_mutated_records(data: st.DataObject) -> None:
    valid = encode_batch(BASE_OFFSET, SAMPLE_RECORDS, timestamp_ms=TIMESTAMP_MS)
    payload = bytearray(valid[HEADER_SIZE:])
    changes = data.draw(st.lists(st.tuples(st.integers(0, len(payload) - 1), st.integers(0, 255)), min_size=1, max_size=4))
    for position, value in changes:
        payload[position] = value

    decode_anything(build_batch(bytes(payload), codec=CODEC_NONE, record_count=len(SAMPLE_RECORDS)))
