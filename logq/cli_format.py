"""Output of the `logq` command line: message lines, JSON objects and plain-text tables.

Nothing here adds colour or box drawing, so the output stays readable in logs
and stable for scripts.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import orjson
import typer

from logq import GroupPartitionInfo, Message, TopicInfo
from logq.consumers import GroupConfig
from logq.dead_letters import DeadLetter, RedriveReport

# Placeholder for a missing key in human output, as kafka-console-consumer prints it.
NO_KEY_TEXT = "null"


def format_timestamp(timestamp_ms: int) -> str:
    """Format ms since the Unix epoch as ISO 8601 UTC with milliseconds, e.g. 2024-05-01T12:00:00.123Z."""
    seconds, milliseconds = divmod(timestamp_ms, 1000)
    moment = datetime.fromtimestamp(seconds, tz=UTC).replace(microsecond=milliseconds * 1000)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# Control characters that human output writes as escapes: C0 except tab, DEL and C1.
# A terminal acts on them (ESC and CSI start sequences that can clear the screen or
# retitle the window, CR returns to the start of the line), so printing message
# text raw would let a producer rewrite the user's screen. Tab only moves the
# cursor forward, so it stays as it is.
_CONTROL_ESCAPES = {
    code: f"\\x{code:02x}" for code in [*range(0x20), *range(0x7F, 0xA0)] if code != ord("\t")
} | {ord("\r"): "\\r", ord("\n"): "\\n"}
_CONTROL_PATTERN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def escape_controls(text: str) -> str:
    """Return `text` for a terminal: CR and LF as \\r and \\n, other C0 and C1 controls and DEL as \\xHH.

    Tab and every other character stay as they are, and so do backslashes,
    so the output is for people to read and is not an unambiguous encoding.
    """
    if _CONTROL_PATTERN.search(text) is None:
        return text
    return text.translate(_CONTROL_ESCAPES)


def display_text(data: bytes) -> str:
    """Decode bytes for one line of human output.

    Invalid UTF-8 becomes U+FFFD and a trailing CR/LF is dropped. Control
    characters are escaped by `escape_controls`, so one message stays one line
    and cannot send terminal control sequences.
    """
    return escape_controls(data.decode("utf-8", "replace").rstrip("\r\n"))


def format_message_line(message: Message) -> str:
    """Format a message as `partition:offset key value` for human output.

    A redelivered message (delivery count above 1) gets ` [delivery N]` at the end.
    """
    key = NO_KEY_TEXT if message.key is None else display_text(message.key)
    line = f"{message.partition}:{message.offset} {key} {display_text(message.raw_value)}"
    if message.delivery_count > 1:
        line += f" [delivery {message.delivery_count}]"
    return line


def message_to_json(message: Message) -> dict[str, Any]:
    """Convert a message to the JSON object that `consume --json` and `replay --json` print.

    `value` is the decoded JSON value for a message sent as JSON, the text for
    bytes that are valid UTF-8, and otherwise null with the bytes in
    `value_base64`. `value_format` distinguishes the three ("json", "text",
    "binary"). `key` follows the same rule, with `key_base64`. Messages of a
    consumer group also get `group` and `delivery_count`.
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
        result["delivery_count"] = message.delivery_count
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


def format_settings(settings: Sequence[tuple[str, Any]]) -> str:
    """Format (name, value) pairs as lines of a name column and a value column."""
    width = max(len(name) for name, _ in settings)
    return "\n".join(f"{name.ljust(width)}  {_cell_text(value)}" for name, value in settings)


def format_topic(info: TopicInfo) -> str:
    """Format a topic's settings and partition table for `topics describe`."""
    settings = format_settings([("topic", info.name), *asdict(info.config).items(), ("messages", info.messages)])
    table = format_table(
        ["partition", "log start offset", "log end offset", "high watermark", "size bytes", "segments"],
        [
            [p.partition, p.log_start_offset, p.log_end_offset, p.high_watermark, p.size_bytes, p.segments]
            for p in info.partitions
        ],
    )
    return settings + "\n\n" + table


GROUP_COLUMNS = [
    "topic", "partition", "committed offset", "high watermark", "lag", "in flight", "waiting", "held", "dead-lettered",
]
SECONDS_SETTINGS = ("lease_timeout", "retry_delay", "retry_max_delay")


def format_group_config(name: str, config: GroupConfig) -> str:
    """Format a group's settings as name and value lines, durations with their unit."""
    settings: list[tuple[str, Any]] = [("group", name)]
    for setting, value in asdict(config).items():
        if setting in SECONDS_SETTINGS:
            value = f"{value:g} s"
        elif setting == "dead_letter_topic" and value is None:
            value = config.dead_letter_topic_for("<topic>", name)
        elif setting == "starvation_limit" and value is None:
            value = "off"
        settings.append((setting, value))
    return format_settings(settings)


def format_group(name: str, config: GroupConfig, rows: Sequence[GroupPartitionInfo]) -> str:
    """Format a group's settings and its per-partition positions and delivery counts."""
    if not rows:
        return format_group_config(name, config) + "\n\nthe group has not read any topic yet"
    table = format_table(
        GROUP_COLUMNS,
        [
            [r.topic, r.partition, r.committed_offset, r.high_watermark, r.lag, r.in_flight, r.waiting, r.held,
             r.dead_lettered]
            for r in rows
        ],
    )
    return format_group_config(name, config) + "\n\n" + table


def group_to_json(name: str, config: GroupConfig, rows: Sequence[GroupPartitionInfo]) -> dict[str, Any]:
    """Convert a group's settings and positions to the object `groups describe --json` prints."""
    return {"group": name, "config": asdict(config), "partitions": [asdict(row) for row in rows]}


# -- dead letters ---------------------------------------------------------------------------

DEAD_LETTER_COLUMNS = ["dlq offset", "source", "deliveries", "reason", "last failure", "redriven"]


def format_dead_letters(letters: Sequence[DeadLetter]) -> str:
    """Format dead letters as a table, with the source as `partition@offset` in the source topic."""
    return format_table(
        DEAD_LETTER_COLUMNS,
        [
            [
                letter.dlq_offset, f"{letter.source_partition}@{letter.source_offset}", letter.delivery_count,
                escape_controls(letter.reason), escape_controls(letter.last_failure) or None,
                "yes" if letter.redriven else "no",
            ]
            for letter in letters
        ],
    )


def dead_letter_to_json(letter: DeadLetter, *, with_message: bool) -> dict[str, Any]:
    """Convert a dead letter to the object `dlq list --json` prints, with the message too for `dlq show`."""
    result: dict[str, Any] = {
        "dlq_topic": letter.dlq_topic,
        "dlq_offset": letter.dlq_offset,
        "source_topic": letter.source_topic,
        "source_partition": letter.source_partition,
        "source_offset": letter.source_offset,
        "group": letter.group,
        "reason": letter.reason,
        "delivery_count": letter.delivery_count,
        "first_failure": letter.first_failure or None,
        "last_failure": letter.last_failure or None,
        "redriven": letter.redriven,
    }
    if with_message:
        result["message"] = message_to_json(letter.message)
    return result


def format_dead_letter(letter: DeadLetter) -> str:
    """Format one dead letter for `dlq show`: its facts, every header, then the value.

    The texts that come from headers are escaped by `escape_controls`.
    """
    message = letter.message
    facts = format_settings([
        ("dlq topic", letter.dlq_topic),
        ("dlq offset", letter.dlq_offset),
        ("source", f"{letter.source_topic}/{letter.source_partition}@{letter.source_offset}"),
        ("group", letter.group),
        ("reason", escape_controls(letter.reason)),
        ("delivery count", letter.delivery_count),
        ("first failure", escape_controls(letter.first_failure) or None),
        ("last failure", escape_controls(letter.last_failure) or None),
        ("redriven", "yes" if letter.redriven else "no"),
        ("key", NO_KEY_TEXT if message.key is None else display_text(message.key)),
        ("priority", message.priority),
        ("timestamp", format_timestamp(message.timestamp_ms)),
    ])
    headers = [f"  {escape_controls(name)}: {escape_controls(text)}" for name, text in message.headers.items()]
    return "\n".join([facts, "headers:", *headers, "value:", display_text(message.raw_value)])


def redrive_lines(report: RedriveReport, letters: dict[int, DeadLetter]) -> list[str]:
    """Return one line per dead letter of a redrive, redriven or skipped with the reason."""
    lines = []
    for dlq_offset in report.redriven:
        letter = letters[dlq_offset]
        lines.append(
            f"redriven dlq offset {dlq_offset}: {letter.source_topic}/{letter.source_partition}@{letter.source_offset}"
        )
    for dlq_offset, reason in sorted(report.skipped.items()):
        lines.append(f"skipped dlq offset {dlq_offset}: {escape_controls(reason)}")
    return lines


def redrive_to_json(report: RedriveReport) -> dict[str, Any]:
    """Convert a redrive report to the object `dlq redrive --json` prints."""
    return {
        "redriven": report.redriven,
        "skipped": [{"dlq_offset": offset, "reason": reason} for offset, reason in sorted(report.skipped.items())],
    }


def counted(count: int, noun: str) -> str:
    """Return "1 line" or "3 lines": `count` with `noun`, plural unless it is 1."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
