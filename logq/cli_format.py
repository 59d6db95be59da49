"""Output of the `logq` command line: message lines, JSON objects and plain-text tables.

Nothing here adds colour or box drawing, so the output stays readable in logs
and stable for scripts.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import orjson
import typer

from logq import GroupPartitionInfo, Message, TopicInfo

# Placeholder for a missing key in human output, as kafka-console-consumer prints it.
NO_KEY_TEXT = "null"


def format_timestamp(timestamp_ms: int) -> str:
    """Format ms since the Unix epoch as ISO 8601 UTC with milliseconds, e.g. 2024-05-01T12:00:00.123Z."""
    seconds, milliseconds = divmod(timestamp_ms, 1000)
    moment = datetime.fromtimestamp(seconds, tz=UTC).replace(microsecond=milliseconds * 1000)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def display_text(data: bytes) -> str:
    """Decode bytes for one line of human output.

    Invalid UTF-8 becomes U+FFFD, a trailing CR/LF is dropped, and any other
    CR or LF is written as the escape \\r or \\n so one message stays one line.
    """
    text = data.decode("utf-8", "replace").rstrip("\r\n")
    return text.replace("\r", "\\r").replace("\n", "\\n")


def format_message_line(message: Message) -> str:
    """Format a message as `partition:offset key value` for human output."""
    key = NO_KEY_TEXT if message.key is None else display_text(message.key)
    return f"{message.partition}:{message.offset} {key} {display_text(message.raw_value)}"


def message_to_json(message: Message) -> dict[str, Any]:
    """Convert a message to the JSON object that `consume --json` and `replay --json` print.

    `value` is the decoded JSON value for a message sent as JSON, the text for
    bytes that are valid UTF-8, and otherwise null with the bytes in
    `value_base64`. `value_format` distinguishes the three ("json", "text",
    "binary"). `key` follows the same rule, with `key_base64`.
    """
    result: dict[str, Any] = {
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "timestamp": format_timestamp(message.timestamp_ms),
        "timestamp_ms": message.timestamp_ms,
        "priority": message.priority,
        "headers": message.headers,
    }
    result.update(_bytes_fields("key", message.key))
    if message.is_json:
        result["value"] = orjson.Fragment(message.raw_value)
        result["value_format"] = "json"
    else:
        result.update(_bytes_fields("value", message.raw_value))
        result["value_format"] = "binary" if "value_base64" in result else "text"
    if message.group is not None:
        result["group"] = message.group
    return result


def _bytes_fields(name: str, data: bytes | None) -> dict[str, Any]:
    if data is None:
        return {name: None}
    try:
        return {name: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {name: None, f"{name}_base64": base64.b64encode(data).decode("ascii")}


def to_json_line(value: Any) -> str:
    """Encode a value as one line of compact JSON, without the newline."""
    return orjson.dumps(value).decode("utf-8")


def print_messages(messages: Sequence[Message], *, json_output: bool) -> None:
    """Write messages to stdout in one write, one line each, as text or JSON."""
    if json_output:
        lines = [to_json_line(message_to_json(message)) for message in messages]
    else:
        lines = [format_message_line(message) for message in messages]
    typer.echo("\n".join(lines))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Format rows as aligned plain-text columns under upper-case headers.

    Integers are right-aligned and None prints as "-".
    """
    cells = [[_cell_text(value) for value in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        widths = [max(width, len(text)) for width, text in zip(widths, row, strict=True)]
    right_aligned = [bool(rows) and all(isinstance(row[i], int) for row in rows) for i in range(len(headers))]

    def join(texts: Sequence[str]) -> str:
        padded = [
            text.rjust(width) if align_right else text.ljust(width)
            for text, width, align_right in zip(texts, widths, right_aligned, strict=True)
        ]
        return "  ".join(padded).rstrip()

    return "\n".join([join([header.upper() for header in headers]), *(join(row) for row in cells)])


def _cell_text(value: Any) -> str:
    return "-" if value is None else str(value)


def topic_to_json(info: TopicInfo) -> dict[str, Any]:
    """Convert a topic's settings and partitions to the object `topics describe --json` prints."""
    return {
        "name": info.name,
        "config": asdict(info.config),
        "messages": info.messages,
        "partitions": [asdict(partition) for partition in info.partitions],
    }


def format_topic(info: TopicInfo) -> str:
    """Format a topic's settings and partition table for `topics describe`."""
    settings = [("topic", info.name), *asdict(info.config).items(), ("messages", info.messages)]
    width = max(len(name) for name, _ in settings)
    lines = [f"{name.ljust(width)}  {_cell_text(value)}" for name, value in settings]
    table = format_table(
        ["partition", "log start offset", "log end offset", "high watermark", "size bytes", "segments"],
        [
            [p.partition, p.log_start_offset, p.log_end_offset, p.high_watermark, p.size_bytes, p.segments]
            for p in info.partitions
        ],
    )
    return "\n".join(lines) + "\n\n" + table


GROUP_COLUMNS = ["topic", "partition", "committed offset", "high watermark", "lag", "in flight"]


def format_group_rows(rows: Sequence[GroupPartitionInfo]) -> str:
    """Format a group's per-partition positions as a table."""
    return format_table(
        GROUP_COLUMNS,
        [[r.topic, r.partition, r.committed_offset, r.high_watermark, r.lag, r.in_flight] for r in rows],
    )


def group_to_json(name: str, rows: Sequence[GroupPartitionInfo]) -> dict[str, Any]:
    """Convert a group's positions to the object `groups describe --json` prints."""
    return {"group": name, "partitions": [asdict(row) for row in rows]}
