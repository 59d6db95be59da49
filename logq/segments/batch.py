"""Record batches: the unit of append, compression and CRC in a segment file.

A batch is a fixed 38-byte header followed by its records. All integers are
big-endian. docs/format.md is the full specification; the layout is:

    offset  size  field
    0       8     base offset (int64)
    8       4     batch length: bytes after this field (int32)
    12      1     magic, the format version (int8, = 1)
    13      4     CRC-32 (zlib polynomial) of every byte from offset 17 to the end
    17      1     attributes: bits 0-2 are the codec (0 = none, 1 = zstd)
    18      4     record count (int32)
    22      8     first timestamp, ms since the Unix epoch (int64)
    30      8     max timestamp, ms since the Unix epoch (int64)
    38      ...   records, zstd-compressed as one frame when the codec is 1

Each record is an 18-byte header followed by its variable parts:

    length (uint32, bytes after this field), offset delta (uint32),
    timestamp delta in ms (uint32), priority (uint8), flags (uint8, bit 0 =
    value is JSON), key length (int32, -1 = no key), key bytes,
    header count (uint16), then per header: name length (uint16), UTF-8 name,
    value length (uint32), UTF-8 value; then value length (uint32), value bytes.
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from typing import Final, NamedTuple

import zstandard

from logq.errors import CorruptRecordError

MAGIC: Final = 1
HEADER = struct.Struct(">qibIbiqq")
HEADER_SIZE: Final = HEADER.size  # 38
LENGTH_FIELD_END: Final = 12  # base offset and batch length precede what the length counts
CRC_START: Final = 17  # the CRC covers the attributes byte and everything after it

CODEC_NONE: Final = 0
CODEC_ZSTD: Final = 1
CODEC_MASK: Final = 0x07
CODEC_NAMES: Final = {"none": CODEC_NONE, "zstd": CODEC_ZSTD}

FLAG_JSON: Final = 0x01

RECORD_HEADER = struct.Struct(">IIIBBi")
HEADER_NAME_LENGTH = struct.Struct(">H")
LENGTH_U32 = struct.Struct(">I")
COUNT_U16 = struct.Struct(">H")
# A record without key and headers: the record header, a header count of 0 and
# the value length, which encode and decode handle in one struct call.
PLAIN_RECORD_HEADER = struct.Struct(">IIIBBiHI")

# A batch never needs more than this; a larger length field means garbage, and
# trusting it would make the reader allocate gigabytes.
MAX_BATCH_BYTES: Final = 256 * 1024 * 1024

# python-zstandard (0.25) documents its contexts as unsafe to share between
# threads, and a shared decompressor crashed the interpreter under concurrent
# reads. Reads decode batches in worker threads, so each thread keeps its own.
_zstd_contexts = threading.local()


def _zstd_compressor() -> zstandard.ZstdCompressor:
    compressor = getattr(_zstd_contexts, "compressor", None)
    if compressor is None:
        compressor = _zstd_contexts.compressor = zstandard.ZstdCompressor(level=3)
    return compressor


def _zstd_decompressor() -> zstandard.ZstdDecompressor:
    decompressor = getattr(_zstd_contexts, "decompressor", None)
    if decompressor is None:
        decompressor = _zstd_contexts.decompressor = zstandard.ZstdDecompressor()
    return decompressor


class RecordInput(NamedTuple):
    """One message as the producer hands it to the log, before offsets exist.

    A named tuple rather than a dataclass because the append path builds one
    per message, and a tuple is several times cheaper to create.
    """

    value: bytes
    key: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()
    priority: int = 0
    flags: int = 0


class Record(NamedTuple):
    """One decoded record with its absolute offset and timestamp.

    A named tuple for the same reason as RecordInput: reads decode one per
    message.
    """

    offset: int
    timestamp_ms: int
    priority: int
    flags: int
    key: bytes | None
    headers: tuple[tuple[str, str], ...]
    value: bytes


class BatchHeader(NamedTuple):
    """The fixed header of a batch, read without checking the CRC.

    A named tuple because every append and read parses one.
    """

    base_offset: int
    batch_length: int
    magic: int
    crc: int
    attributes: int
    record_count: int
    first_timestamp_ms: int
    max_timestamp_ms: int

    @property
    def size(self) -> int:
        """Total bytes of the batch on disk, header included."""
        return LENGTH_FIELD_END + self.batch_length

    @property
    def last_offset(self) -> int:
        """Offset of the batch's last record."""
        return self.base_offset + self.record_count - 1

    @property
    def next_offset(self) -> int:
        """Offset right after the batch's last record."""
        return self.base_offset + self.record_count

    @property
    def codec(self) -> int:
        """Compression codec id (CODEC_NONE or CODEC_ZSTD)."""
        return self.attributes & CODEC_MASK


def _encode_record(out: list[bytes], offset_delta: int, timestamp_delta: int, record: RecordInput) -> None:
    parts: list[bytes] = []
    key = record.key
    if key is not None:
        parts.append(key)
    parts.append(COUNT_U16.pack(len(record.headers)))
    for name, text in record.headers:
        name_bytes = name.encode("utf-8")
        text_bytes = text.encode("utf-8")
        parts.append(HEADER_NAME_LENGTH.pack(len(name_bytes)))
        parts.append(name_bytes)
        parts.append(LENGTH_U32.pack(len(text_bytes)))
        parts.append(text_bytes)
    parts.append(LENGTH_U32.pack(len(record.value)))
    parts.append(record.value)
    body_length = sum(len(part) for part in parts) + RECORD_HEADER.size - 4
    out.append(
        RECORD_HEADER.pack(
            body_length,
            offset_delta,
            timestamp_delta,
            record.priority,
            record.flags,
            -1 if key is None else len(key),
        )
    )
    out.extend(parts)


class PlainRecords(Sequence[RecordInput]):
    """Byte values without key and headers that share one priority: the common batched send.

    A sequence of RecordInput like any other, but it stores only the values,
    and `encode` turns them into records in one comprehension. Building a
    RecordInput per value and encoding it field by field cost about twice as
    much per message.
    """

    __slots__ = ("values", "priority")

    def __init__(self, values: list[bytes], priority: int) -> None:
        self.values = values
        self.priority = priority

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index):  # type: ignore[no-untyped-def, override]
        if isinstance(index, slice):
            return PlainRecords(self.values[index], self.priority)
        return RecordInput(self.values[index], None, (), self.priority, 0)

    def encode(self) -> list[bytes]:
        """Return the encoded records, offset deltas from 0, as a list of byte strings to join."""
        pack = PLAIN_RECORD_HEADER.pack
        body_size = PLAIN_RECORD_HEADER.size - 4
        priority = self.priority
        return [
            pack(body_size + len(value), delta, 0, priority, 0, -1, 0, len(value)) + value
            for delta, value in enumerate(self.values)
        ]


def _encode_records(records: Sequence[RecordInput]) -> list[bytes]:
    """Return the encoded records as a list of byte strings to join."""
    if isinstance(records, PlainRecords):
        return records.encode()
    body: list[bytes] = []
    append = body.append
    pack_plain = PLAIN_RECORD_HEADER.pack
    plain_size = PLAIN_RECORD_HEADER.size - 4
    delta = 0
    for record in records:
        value, key, headers, priority, flags = record
        if key is None and not headers:
            # The common case in one pack: no key (length -1), no headers (count 0).
            append(pack_plain(plain_size + len(value), delta, 0, priority, flags, -1, 0, len(value)))
            append(value)
        else:
            _encode_record(body, delta, 0, record)
        delta += 1
    return body


def encode_batch(
    base_offset: int,
    records: Sequence[RecordInput],
    *,
    timestamp_ms: int,
    codec: int = CODEC_NONE,
) -> bytes:
    """Encode `records` as one batch whose first offset is `base_offset`.

    Every record gets `timestamp_ms` (the log assigns append time). The caller
    validates sizes, priorities and header names before calling.
    """
    return encode_batch_with_header(base_offset, records, timestamp_ms=timestamp_ms, codec=codec)[0]


def encode_batch_with_header(
    base_offset: int,
    records: Sequence[RecordInput],
    *,
    timestamp_ms: int,
    codec: int = CODEC_NONE,
) -> tuple[bytes, BatchHeader]:
    """Encode `records` as `encode_batch` does; also return the batch's header, as `parse_header` would read it."""
    if not records:
        raise ValueError("a record batch needs at least one record")
    payload = b"".join(_encode_records(records))
    if codec == CODEC_ZSTD:
        payload = _zstd_compressor().compress(payload)
    after_crc = (
        struct.pack(">biqq", codec, len(records), timestamp_ms, timestamp_ms) + payload
    )
    crc = zlib.crc32(after_crc)
    batch_length = 1 + 4 + len(after_crc)
    header = BatchHeader(base_offset, batch_length, MAGIC, crc, codec, len(records), timestamp_ms, timestamp_ms)
    return struct.pack(">qibI", base_offset, batch_length, MAGIC, crc) + after_crc, header


def parse_header(buffer: bytes | memoryview, position: int = 0) -> BatchHeader:
    """Read the batch header at `position` of `buffer`, checking only its shape.

    Raises CorruptRecordError when fewer than HEADER_SIZE bytes remain, the
    magic byte is unknown or the length field is out of range. The CRC is
    checked by `verify_batch`.
    """
    if len(buffer) - position < HEADER_SIZE:
        raise CorruptRecordError(
            f"batch header at position {position} is cut short: "
            f"{len(buffer) - position} of {HEADER_SIZE} bytes present"
        )
    fields = HEADER.unpack_from(buffer, position)
    header = BatchHeader(*fields)
    if header.magic != MAGIC:
        raise CorruptRecordError(
            f"batch at position {position} has magic {header.magic}, expected {MAGIC}"
        )
    if not HEADER_SIZE - LENGTH_FIELD_END <= header.batch_length <= MAX_BATCH_BYTES:
        raise CorruptRecordError(
            f"batch at position {position} declares length {header.batch_length}, "
            f"outside {HEADER_SIZE - LENGTH_FIELD_END}..{MAX_BATCH_BYTES}"
        )
    if header.record_count < 1 or header.base_offset < 0:
        raise CorruptRecordError(
            f"batch at position {position} declares base offset {header.base_offset} "
            f"and {header.record_count} records"
        )
    return header


def verify_batch(buffer: bytes | memoryview, position: int, header: BatchHeader) -> None:
    """Check that the whole batch is present and its CRC matches.

    Raises CorruptRecordError naming the position and both CRC values.
    """
    end = position + header.size
    if end > len(buffer):
        raise CorruptRecordError(
            f"batch at position {position} is cut short: "
            f"{len(buffer) - position} of {header.size} bytes present"
        )
    found = zlib.crc32(memoryview(buffer)[position + CRC_START : end])
    if found != header.crc:
        raise CorruptRecordError(
            f"batch at position {position} (base offset {header.base_offset}) failed its CRC: "
            f"stored {header.crc:#010x}, computed {found:#010x}"
        )


def decode_records(buffer: bytes | memoryview, position: int, header: BatchHeader) -> list[Record]:
    """Decode the records of a batch whose CRC was already verified."""
    payload = bytes(memoryview(buffer)[position + HEADER_SIZE : position + header.size])
    if header.codec == CODEC_ZSTD:
        try:
            # A frame that declares its size is decompressed into a buffer of that size,
            # so a crafted frame could ask for gigabytes. No real batch exceeds MAX_BATCH_BYTES.
            declared = zstandard.frame_content_size(payload)
            if declared > MAX_BATCH_BYTES:
                raise zstandard.ZstdError(f"the frame declares {declared} bytes, above {MAX_BATCH_BYTES}")
            payload = _zstd_decompressor().decompress(payload, max_output_size=MAX_BATCH_BYTES)
        # A damaged frame header can declare a content size too large to allocate.
        except (zstandard.ZstdError, MemoryError) as exc:
            raise CorruptRecordError(
                f"batch at position {position} (base offset {header.base_offset}) "
                f"does not decompress: {exc}"
            ) from exc
    elif header.codec != CODEC_NONE:
        raise CorruptRecordError(
            f"batch at position {position} uses unknown codec {header.codec}"
        )
    try:
        return _decode_payload(payload, header)
    except (struct.error, UnicodeDecodeError, IndexError) as exc:
        raise CorruptRecordError(
            f"records of the batch at position {position} "
            f"(base offset {header.base_offset}) do not parse: {exc}"
        ) from exc


def _decode_payload(payload: bytes, header: BatchHeader) -> list[Record]:
    records: list[Record] = []
    append = records.append
    base_offset = header.base_offset
    first_timestamp = header.first_timestamp_ms
    payload_size = len(payload)
    unpack_plain = PLAIN_RECORD_HEADER.unpack_from
    plain_size = PLAIN_RECORD_HEADER.size
    no_headers: tuple[tuple[str, str], ...] = ()
    cursor = 0
    for _ in range(header.record_count):
        if cursor + plain_size <= payload_size:
            length, offset_delta, timestamp_delta, priority, flags, key_length, header_count, value_length = (
                unpack_plain(payload, cursor)
            )
            if key_length == -1 and header_count == 0 and length == plain_size - 4 + value_length:
                # The common case: no key, no headers, and the lengths agree.
                end = cursor + plain_size + value_length
                if end > payload_size:
                    raise IndexError(f"record at payload byte {cursor} runs past the batch")
                append(Record(base_offset + offset_delta, first_timestamp + timestamp_delta, priority, flags,
                              None, no_headers, payload[cursor + plain_size:end]))
                cursor = end
                continue
        length, offset_delta, timestamp_delta, priority, flags, key_length = (
            RECORD_HEADER.unpack_from(payload, cursor)
        )
        end = cursor + 4 + length
        if end > len(payload):
            raise IndexError(f"record at payload byte {cursor} runs past the batch")
        cursor += RECORD_HEADER.size
        key = None
        if key_length >= 0:
            key = payload[cursor : cursor + key_length]
            cursor += key_length
        (header_count,) = COUNT_U16.unpack_from(payload, cursor)
        cursor += 2
        headers = []
        for _ in range(header_count):
            (name_length,) = HEADER_NAME_LENGTH.unpack_from(payload, cursor)
            cursor += 2
            name = payload[cursor : cursor + name_length].decode("utf-8")
            cursor += name_length
            (text_length,) = LENGTH_U32.unpack_from(payload, cursor)
            cursor += 4
            headers.append((name, payload[cursor : cursor + text_length].decode("utf-8")))
            cursor += text_length
        (value_length,) = LENGTH_U32.unpack_from(payload, cursor)
        cursor += 4
        value = payload[cursor : cursor + value_length]
        cursor += value_length
        if cursor != end:
            raise IndexError(f"record ends at payload byte {cursor}, its length field gives {end}")
        append(Record(base_offset + offset_delta, first_timestamp + timestamp_delta, priority, flags,
                      key, tuple(headers), value))
    if cursor != len(payload):
        raise IndexError(f"{len(payload) - cursor} bytes follow the last record")
    return records


def iter_batches(buffer: bytes | memoryview, position: int = 0) -> Iterator[tuple[int, BatchHeader]]:
    """Yield (position, header) of each complete, CRC-checked batch in `buffer`.

    Stops silently at a batch cut off by the end of `buffer`, because callers
    read segments in chunks. Raises CorruptRecordError on a damaged batch.
    """
    while len(buffer) - position >= HEADER_SIZE:
        header = parse_header(buffer, position)
        if position + header.size > len(buffer):
            return
        verify_batch(buffer, position, header)
        yield position, header
        position += header.size
