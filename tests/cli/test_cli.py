"""Tests of the `logq` command line: each command's output, its --json fields and its errors.

Most tests run the app in-process with Typer's CliRunner on a data directory in
tmp_path. Signals, terminals and the data-directory lock need a real second
process, so those tests start `python -m logq` or a small Python script.
"""

import base64
import json
import os
import pty
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from logq import UnknownTopicError
from logq.cli import ExitCode, app

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
CLI_DOCS = REPOSITORY_ROOT / "docs" / "cli.md"
LOGQ = [sys.executable, "-m", "logq"]
PROCESS_TIMEOUT_SECONDS = 30

runner = CliRunner()


def invoke(data_dir: Path, *args: str, input: str | bytes | None = None):
    """Run `logq --data DATA_DIR ARGS...` in-process and return the CliRunner result."""
    return runner.invoke(app, ["--data", str(data_dir), *args], input=input)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def replayed_values(data_dir: Path, topic: str) -> list[str]:
    result = invoke(data_dir, "replay", topic, "--json")
    assert result.exit_code == 0, result.output
    return [message["value"] for message in json_lines(result.stdout)]


def restore_default_sigint() -> None:
    """Undo an inherited SIG_IGN (background jobs of a shell), so the child can get Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def killed_after(process: subprocess.Popen, seconds: float = PROCESS_TIMEOUT_SECONDS) -> Iterator[None]:
    """Kill `process` if the block takes longer than `seconds`, so a hung child cannot hang the test run."""
    timer = threading.Timer(seconds, process.kill)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()


def read_line_containing(stream, text: str) -> str:
    """Read lines from `stream` until one contains `text`; fail at the end of the stream."""
    while line := stream.readline():
        if text in line:
            return line
    pytest.fail(f"the stream ended without a line containing {text!r}")


# -- topics ---------------------------------------------------------------------------


def test_topics_create_and_list(data_dir: Path) -> None:
    created = invoke(data_dir, "topics", "create", "orders", "--partitions", "3")
    listed = invoke(data_dir, "topics", "list")

    assert created.exit_code == 0, created.output
    assert created.stdout == "created topic orders with 3 partitions\n"
    assert listed.exit_code == 0, listed.output
    assert listed.stdout.splitlines()[0].split() == ["TOPIC", "PARTITIONS", "MESSAGES", "SIZE", "BYTES"]
    assert listed.stdout.splitlines()[1].split()[:3] == ["orders", "3", "0"]


def test_topics_list_json(data_dir: Path) -> None:
    invoke(data_dir, "topics", "create", "orders", "--partitions", "2")
    invoke(data_dir, "produce", "orders", "a", "b", "--key", "k")

    result = invoke(data_dir, "topics", "list", "--json")

    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert row["name"] == "orders"
    assert row["partitions"] == 2
    assert row["messages"] == 2
    assert row["size_bytes"] > 0


def test_topics_list_empty(data_dir: Path) -> None:
    result = invoke(data_dir, "topics", "list")

    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "no topics" in result.stderr


def test_topics_create_all_settings(data_dir: Path) -> None:
    result = invoke(
        data_dir, "topics", "create", "events", "--partitions", "4", "--segment-bytes", "65536",
        "--compression", "zstd", "--fsync", "always", "--fsync-interval-ms", "50",
        "--max-message-bytes", "2048", "--retention-bytes", "1000000", "--retention-ms", "60000", "--json",
    )

    assert result.exit_code == 0, result.output
    config = json.loads(result.stdout)["config"]
    assert config == {
        "partitions": 4,
        "segment_bytes": 65536,
        "compression": "zstd",
        "fsync": "always",
        "fsync_interval_ms": 50,
        "max_message_bytes": 2048,
        "retention_bytes": 1000000,
        "retention_ms": 60000,
    }


def test_topics_describe_text_and_json(data_dir: Path) -> None:
    invoke(data_dir, "topics", "create", "orders", "--partitions", "2")
    invoke(data_dir, "produce", "orders", "a", "b", "c", "--key", "k")

    text = invoke(data_dir, "topics", "describe", "orders")
    data = invoke(data_dir, "topics", "describe", "orders", "--json")

    assert text.exit_code == 0, text.output
    assert "messages           3" in text.stdout
    assert "HIGH WATERMARK" in text.stdout
    assert data.exit_code == 0, data.output
    described = json.loads(data.stdout)
    assert described["name"] == "orders"
    assert described["messages"] == 3
    assert [p["partition"] for p in described["partitions"]] == [0, 1]
    assert sum(p["high_watermark"] for p in described["partitions"]) == 3
    assert set(described["partitions"][0]) == {
        "partition", "log_start_offset", "log_end_offset", "high_watermark", "size_bytes", "segments",
    }


def test_topics_create_existing(data_dir: Path) -> None:
    invoke(data_dir, "topics", "create", "orders")

    result = invoke(data_dir, "topics", "create", "orders")

    assert result.exit_code == ExitCode.EXISTS, result.output
    assert result.stderr.startswith("error: topic 'orders' already exists")


def test_topics_create_setting_out_of_range(data_dir: Path) -> None:
    result = invoke(data_dir, "topics", "create", "orders", "--partitions", "0")

    assert result.exit_code == ExitCode.INVALID, result.output
    assert "partitions=0" in result.stderr
    assert "1 to 1024" in result.stderr


def test_topics_create_bad_compression(data_dir: Path) -> None:
    result = invoke(data_dir, "topics", "create", "orders", "--compression", "gzip")

    assert result.exit_code == ExitCode.USAGE, result.output
    assert "gzip" in result.stderr


@pytest.mark.parametrize(
    "name, problem",
    [
        ("../x", "path separator"),
        ("", "empty"),
        ("..", "'.' and '..'"),
        ("a\\b", "path separator"),
        ("x" * 201, "maximum is 200"),
    ],
    ids=["parent-path", "empty", "dot-dot", "backslash", "too-long"],
)
def test_topics_create_invalid_name(data_dir: Path, name: str, problem: str) -> None:
    result = invoke(data_dir, "topics", "create", name)

    assert result.exit_code == ExitCode.INVALID, result.output
    assert result.stderr.startswith(f"error: invalid topic name {name!r}")
    assert problem in result.stderr
    assert "Traceback" not in result.output


def test_topics_describe_unknown(data_dir: Path) -> None:
    result = invoke(data_dir, "topics", "describe", "nope")

    assert result.exit_code == ExitCode.NOT_FOUND, result.output
    assert result.stderr == (
        "error: topic 'nope' does not exist; create it with `logq topics create nope` or Log.create_topic()\n"
    )


def test_topics_delete_with_yes(data_dir: Path) -> None:
    invoke(data_dir, "topics", "create", "orders")

    result = invoke(data_dir, "topics", "delete", "orders", "--yes")

    assert result.exit_code == 0, result.output
    assert result.stdout == "deleted topic orders\n"
    assert json.loads(invoke(data_dir, "topics", "list", "--json").stdout) == []


def test_topics_delete_without_terminal(data_dir: Path) -> None:
    invoke(data_dir, "topics", "create", "orders")

    result = invoke(data_dir, "topics", "delete", "orders", input="y\n")

    assert result.exit_code == ExitCode.USAGE, result.output
    assert "standard input is not a terminal" in result.stderr
    assert "--yes" in result.stderr
    assert [t["name"] for t in json.loads(invoke(data_dir, "topics", "list", "--json").stdout)] == ["orders"]


def test_topics_delete_unknown(data_dir: Path) -> None:
    result = invoke(data_dir, "topics", "delete", "nope", "--yes")

    assert result.exit_code == ExitCode.NOT_FOUND, result.output


@pytest.mark.parametrize(
    "answer, exit_code, remaining",
    [("n", ExitCode.ERROR, ["orders"]), ("y", ExitCode.OK, [])],
    ids=["declined", "confirmed"],
)
def test_topics_delete_prompt_on_terminal(data_dir: Path, answer: str, exit_code: int, remaining: list[str]) -> None:
    invoke(data_dir, "topics", "create", "orders")
    invoke(data_dir, "produce", "orders", "a", "b")
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [*LOGQ, "--data", str(data_dir), "topics", "delete", "orders"],
        stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    os.close(terminal)

    try:
        os.write(controller, f"{answer}\n".encode())
        stdout, stderr = process.communicate(timeout=PROCESS_TIMEOUT_SECONDS)
    finally:
        os.close(controller)

    assert process.returncode == exit_code, stdout + stderr
    assert "Delete topic 'orders' and its 2 messages?" in stdout
    assert [t["name"] for t in json.loads(invoke(data_dir, "topics", "list", "--json").stdout)] == remaining


# -- produce ----------------------------------------------------------------------------


def test_produce_arguments(data_dir: Path) -> None:
    result = invoke(data_dir, "produce", "events", "a", "b", "c")

    assert result.exit_code == 0, result.output
    assert result.stdout == "0\n1\n2\n"
    assert replayed_values(data_dir, "events") == ["a", "b", "c"]


def test_produce_stdin_lines(data_dir: Path) -> None:
    result = invoke(data_dir, "produce", "events", input=b"one\ntwo\r\n\nlast ")

    assert result.exit_code == 0, result.output
    assert result.stdout == "0\n1\n2\n3\n"
    assert replayed_values(data_dir, "events") == ["one", "two", "", "last "]


def test_produce_stdin_interrupt(data_dir: Path) -> None:
    process = subprocess.Popen(
        [*LOGQ, "--data", str(data_dir), "produce", "events"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=restore_default_sigint,
    )

    with killed_after(process):
        process.stdin.write("first\n")
        process.stdin.flush()
        offset = process.stdout.readline()
        # The reader now waits on an open pipe, as it would on a terminal.
        time.sleep(0.3)
        process.send_signal(signal.SIGINT)
        process.wait()

    assert offset == "0\n"
    assert process.returncode == ExitCode.INTERRUPTED
    assert replayed_values(data_dir, "events") == ["first"]


def test_produce_json_output(data_dir: Path) -> None:
    invoke(data_dir, "topics", "create", "orders", "--partitions", "3")

    keyed = invoke(data_dir, "produce", "orders", "a", "--key", "customer-7", "--json")
    keyless = invoke(data_dir, "produce", "orders", "b", "--json")

    assert keyed.exit_code == 0, keyed.output
    [sent] = json_lines(keyed.stdout)
    stored = next(m for m in json_lines(invoke(data_dir, "replay", "orders", "--json").stdout) if m["value"] == "a")
    assert sent == {"topic": "orders", "partition": stored["partition"], "offset": 0}
    assert keyless.exit_code == 0, keyless.output
    assert json_lines(keyless.stdout)[0]["partition"] is None


def test_produce_json_values_headers_priority(data_dir: Path) -> None:
    result = invoke(
        data_dir, "produce", "orders", '{"id": 1, "items": [2, 3]}', '"text"',
        "--json-values", "--key", "customer-7", "--priority", "7", "-H", "source=web", "-H", "trace=a=b",
    )

    assert result.exit_code == 0, result.output
    first, second = json_lines(invoke(data_dir, "consume", "orders", "--group", "g", "--json").stdout)
    assert first["value"] == {"id": 1, "items": [2, 3]}
    assert first["value_format"] == "json"
    assert second["value"] == "text"
    assert second["value_format"] == "json"
    assert first["key"] == "customer-7"
    assert first["priority"] == 7
    assert first["headers"] == {"source": "web", "trace": "a=b"}


def test_produce_json_values_stdin(data_dir: Path) -> None:
    result = invoke(data_dir, "produce", "orders", "--json-values", input='{"a": 1}\n[1, 2]\n')

    assert result.exit_code == 0, result.output
    assert replayed_values(data_dir, "orders") == [{"a": 1}, [1, 2]]


def test_produce_invalid_json_argument(data_dir: Path) -> None:
    result = invoke(data_dir, "produce", "orders", "{oops", "--json-values")

    assert result.exit_code == ExitCode.USAGE, result.output
    assert "value 1 '{oops' is not valid JSON" in result.stderr


def test_produce_invalid_json_stdin_line(data_dir: Path) -> None:
    result = invoke(data_dir, "produce", "orders", "--json-values", input="1\n{oops\n")

    assert result.exit_code == ExitCode.INVALID, result.output
    assert result.stderr.startswith("error: line 2 of standard input '{oops' is not valid JSON")


@pytest.mark.parametrize(
    "header, problem",
    [("noequals", "has no '='"), ("=value", "empty name")],
    ids=["no-equals", "empty-name"],
)
def test_produce_bad_header(data_dir: Path, header: str, problem: str) -> None:
    result = invoke(data_dir, "produce", "orders", "a", "--header", header)

    assert result.exit_code == ExitCode.USAGE, result.output
    assert f"header {header!r}" in result.stderr
    assert problem in result.stderr
    assert "NAME=VALUE" in result.stderr


def test_produce_duplicate_header(data_dir: Path) -> None:
    result = invoke(data_dir, "produce", "orders", "a", "-H", "a=1", "-H", "a=2")

    assert result.exit_code == ExitCode.USAGE, result.output
    assert "given twice" in result.stderr


@pytest.mark.parametrize("priority", ["-1", "256"])
def test_produce_bad_priority(data_dir: Path, priority: str) -> None:
    result = invoke(data_dir, "produce", "orders", "a", "--priority", priority)

    assert result.exit_code == ExitCode.USAGE, result.output
    assert f"{priority} is out of range" in result.stderr
    assert "0 (the default) to 255" in result.stderr


def test_produce_message_too_large(data_dir: Path) -> None:
    invoke(data_dir, "topics", "create", "small", "--max-message-bytes", "10")

    result = invoke(data_dir, "produce", "small", "x" * 11)

    assert result.exit_code == ExitCode.INVALID, result.output
    assert "exceeds the max message size" in result.stderr


# -- consume ----------------------------------------------------------------------------


def test_consume_text_lines(data_dir: Path) -> None:
    invoke(data_dir, "produce", "events", "plain", "--key", "k1")
    invoke(data_dir, "produce", "events", input=b"crlf\r\n")
    invoke(data_dir, "produce", "events", "multi\nline\r\n")

    result = invoke(data_dir, "consume", "events", "--group", "g")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["0:0 k1 plain", "0:1 null crlf", "0:2 null multi\\nline"]


def test_consume_json_fields(data_dir: Path) -> None:
    invoke(data_dir, "produce", "events", "hello", "--key", "k", "-H", "a=b")

    result = invoke(data_dir, "consume", "events", "--group", "g", "--json")

    assert result.exit_code == 0, result.output
    [message] = json_lines(result.stdout)
    assert message["topic"] == "events"
    assert message["partition"] == 0
    assert message["offset"] == 0
    assert message["key"] == "k"
    assert message["value"] == "hello"
    assert message["value_format"] == "text"
    assert message["priority"] == 0
    assert message["headers"] == {"a": "b"}
    assert message["group"] == "g"
    assert "value_base64" not in message
    expected_time = datetime.fromtimestamp(message["timestamp_ms"] / 1000, tz=UTC)
    assert message["timestamp"] == expected_time.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_consume_json_binary_value_and_key(data_dir: Path) -> None:
    # A surrogate escape is how Python passes the argument byte 0xff, which is not UTF-8.
    invoke(data_dir, "produce", "events", "--key", "\udcff", input=b"\xff\xfe bytes\n")

    result = invoke(data_dir, "consume", "events", "--group", "g", "--json")

    assert result.exit_code == 0, result.output
    [message] = json_lines(result.stdout)
    assert message["value"] is None
    assert message["value_base64"] == "//4gYnl0ZXM="
    assert message["value_format"] == "binary"
    assert message["key"] is None
    assert message["key_base64"] == "/w=="


def test_consume_count_then_resume(data_dir: Path) -> None:
    invoke(data_dir, "produce", "events", "a", "b", "c", "d", "e")

    first = invoke(data_dir, "consume", "events", "--group", "g", "--count", "2")
    rest = invoke(data_dir, "consume", "events", "--group", "g", "--timeout", "0.2")
    after = invoke(data_dir, "consume", "events", "--group", "g", "--timeout", "0")

    assert first.exit_code == 0, first.output
    assert first.stdout.splitlines() == ["0:0 null a", "0:1 null b"]
    assert rest.stdout.splitlines() == ["0:2 null c", "0:3 null d", "0:4 null e"]
    assert after.exit_code == 0, after.output
    assert after.stdout == ""


def test_consume_groups_are_independent(data_dir: Path) -> None:
    invoke(data_dir, "produce", "events", "a", "b")

    first = invoke(data_dir, "consume", "events", "--group", "one", "--timeout", "0")
    second = invoke(data_dir, "consume", "events", "--group", "two", "--timeout", "0")

    assert first.stdout == second.stdout
    assert len(first.stdout.splitlines()) == 2


def test_consume_unknown_topic(data_dir: Path) -> None:
    result = invoke(data_dir, "consume", "nope", "--group", "g")

    assert result.exit_code == ExitCode.NOT_FOUND, result.output
    assert result.stderr.startswith("error: topic 'nope' does not exist")
    assert len(result.stderr.splitlines()) == 1


def test_consume_invalid_group_name(data_dir: Path) -> None:
    invoke(data_dir, "produce", "events", "a")

    result = invoke(data_dir, "consume", "events", "--group", "../g")

    assert result.exit_code == ExitCode.INVALID, result.output
    assert result.stderr.startswith("error: invalid group name '../g'")


@pytest.mark.parametrize(
    "args, option, value",
    [(["--count", "-1"], "--count", "-1"), (["--count", "0"], "--count", "0"), (["--timeout", "-0.5"], "--timeout", "-0.5")],
    ids=["negative-count", "zero-count", "negative-timeout"],
)
def test_consume_bad_option_value(data_dir: Path, args: list[str], option: str, value: str) -> None:
    result = invoke(data_dir, "consume", "events", "--group", "g", *args)

    assert result.exit_code == ExitCode.USAGE, result.output
    assert f"Invalid value for '{option}': {value} is below the minimum" in result.stderr
    assert f"pass {option}" in result.stderr


def test_consume_follow_with_timeout(data_dir: Path) -> None:
    result = invoke(data_dir, "consume", "events", "--group", "g", "--follow", "--timeout", "1")

    assert result.exit_code == ExitCode.USAGE, result.output
    assert "drop --timeout or --follow" in result.stderr


def test_consume_missing_group(data_dir: Path) -> None:
    result = invoke(data_dir, "consume", "events")

    assert result.exit_code == ExitCode.USAGE, result.output
    assert "--group" in result.stderr


def test_consume_follow_sigint_saves_acks(data_dir: Path) -> None:
    invoke(data_dir, "produce", "events", "a", "b", "c")
    process = subprocess.Popen(
        [*LOGQ, "--data", str(data_dir), "consume", "events", "--group", "g", "--follow"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=restore_default_sigint,
    )

    with killed_after(process):
        lines = [process.stdout.readline() for _ in range(3)]
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate()

    assert process.returncode == 0, stderr
    assert lines == ["0:0 null a\n", "0:1 null b\n", "0:2 null c\n"]
    assert stdout == ""
    assert "Traceback" not in stderr
    again = invoke(data_dir, "consume", "events", "--group", "g", "--timeout", "0")
    assert again.stdout == ""
    [position] = json.loads(invoke(data_dir, "groups", "describe", "g", "--json").stdout)["partitions"]
    assert position["committed_offset"] == 3


# -- replay ------------------------------------------------------------------------------


def test_replay_all_and_count(data_dir: Path) -> None:
    invoke(data_dir, "produce", "events", "a", "b", "c")

    everything = invoke(data_dir, "replay", "events")
    counted = invoke(data_dir, "replay", "events", "--count", "2", "--json")

    assert everything.exit_code == 0, everything.output
    assert everything.stdout.splitlines() == ["0:0 null a", "0:1 null b", "0:2 null c"]
    assert [m["offset"] for m in json_lines(counted.stdout)] == [0, 1]
    assert "group" not in json_lines(counted.stdout)[0]


def test_replay_leaves_groups_alone(data_dir: Path) -> None:
    invoke(data_dir, "produce", "events", "a", "b")

    invoke(data_dir, "replay", "events")
    consumed = invoke(data_dir, "consume", "events", "--group", "g", "--timeout", "0")

    assert len(consumed.stdout.splitlines()) == 2


def test_replay_from_offset_and_partition(data_dir: Path) -> None:
    invoke(data_dir, "topics", "create", "events", "--partitions", "2")
    invoke(data_dir, "produce", "events", "a", "b", "c", "--key", "k")
    partition = json_lines(invoke(data_dir, "replay", "events", "--json").stdout)[0]["partition"]

    result = invoke(data_dir, "replay", "events", "--from-offset", "1", "--partition", str(partition), "--json")
    other = invoke(data_dir, "replay", "events", "--partition", str(1 - partition))

    assert result.exit_code == 0, result.output
    assert [(m["offset"], m["value"]) for m in json_lines(result.stdout)] == [(1, "b"), (2, "c")]
    assert other.exit_code == 0, other.output
    assert other.stdout == ""


def test_replay_partition_out_of_range(data_dir: Path) -> None:
    invoke(data_dir, "produce", "events", "a")

    result = invoke(data_dir, "replay", "events", "--partition", "5")

    assert result.exit_code == ExitCode.INVALID, result.output
    assert "partition 5 does not exist" in result.stderr


def test_replay_from_time_without_zone_is_utc(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A local zone of UTC+5 makes a reading of the time as local time miss by five hours.
    monkeypatch.setenv("TZ", "Etc/GMT-5")
    time.tzset()
    try:
        invoke(data_dir, "produce", "events", "a")
        [message] = json_lines(invoke(data_dir, "replay", "events", "--json").stdout)
        appended = datetime.fromtimestamp(message["timestamp_ms"] / 1000, tz=UTC).replace(tzinfo=None)
        before = (appended - timedelta(minutes=1)).isoformat()
        after = (appended + timedelta(minutes=1)).isoformat()

        from_before = invoke(data_dir, "replay", "events", "--from-time", before)
        from_after = invoke(data_dir, "replay", "events", "--from-time", after)
        with_zone = invoke(data_dir, "replay", "events", "--from-time", before + "+00:00")
    finally:
        monkeypatch.undo()
        time.tzset()

    assert from_before.exit_code == 0, from_before.output
    assert from_before.stdout == "0:0 null a\n"
    assert from_after.exit_code == 0, from_after.output
    assert from_after.stdout == ""
    assert with_zone.stdout == "0:0 null a\n"


def test_replay_both_start_options(data_dir: Path) -> None:
    result = invoke(data_dir, "replay", "events", "--from-offset", "0", "--from-time", "2024-01-01T00:00:00Z")

    assert result.exit_code == ExitCode.USAGE, result.output
    assert "not both" in result.stderr


@pytest.mark.parametrize("value", ["yesterday", "2024-13-01", "12:00 May 1"])
def test_replay_bad_time(data_dir: Path, value: str) -> None:
    result = invoke(data_dir, "replay", "events", "--from-time", value)

    assert result.exit_code == ExitCode.USAGE, result.output
    assert f"{value!r} is not an ISO 8601 time" in result.stderr
    assert "2024-05-01T12:00:00Z" in result.stderr


def test_replay_negative_offset(data_dir: Path) -> None:
    result = invoke(data_dir, "replay", "events", "--from-offset", "-3")

    assert result.exit_code == ExitCode.USAGE, result.output
    assert "-3 is below the minimum 0" in result.stderr


def test_replay_unknown_topic(data_dir: Path) -> None:
    result = invoke(data_dir, "replay", "nope")

    assert result.exit_code == ExitCode.NOT_FOUND, result.output


# -- groups ------------------------------------------------------------------------------


def test_groups_list_and_describe(data_dir: Path) -> None:
    invoke(data_dir, "topics", "create", "events", "--partitions", "2")
    invoke(data_dir, "produce", "events", "a", "b", "c", "--key", "k")
    invoke(data_dir, "consume", "events", "--group", "billing", "--count", "2")

    listed = invoke(data_dir, "groups", "list", "--json")
    table = invoke(data_dir, "groups", "describe", "billing")
    described = invoke(data_dir, "groups", "describe", "billing", "--json")

    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout) == [{"group": "billing", "topics": ["events"], "lag": 1}]
    assert table.exit_code == 0, table.output
    settings, rows = table.stdout.split("\n\n")
    assert settings.splitlines()[0].split() == ["group", "billing"]
    assert rows.splitlines()[0].split() == [
        "TOPIC", "PARTITION", "COMMITTED", "OFFSET", "HIGH", "WATERMARK", "LAG", "IN", "FLIGHT", "WAITING", "HELD",
        "DEAD-LETTERED",
    ]
    assert len(rows.splitlines()) == 3
    document = json.loads(described.stdout)
    assert document["group"] == "billing"
    assert document["config"]["max_deliveries"] == 5
    by_partition = {row["partition"]: row for row in document["partitions"]}
    assert sorted(row["committed_offset"] for row in by_partition.values()) == [0, 2]
    assert sorted(row["lag"] for row in by_partition.values()) == [0, 1]
    assert all(row["in_flight"] == 0 for row in by_partition.values())
    assert all(row["topic"] == "events" for row in by_partition.values())


def test_groups_list_text(data_dir: Path) -> None:
    invoke(data_dir, "produce", "events", "a")
    invoke(data_dir, "consume", "events", "--group", "billing", "--timeout", "0")

    result = invoke(data_dir, "groups", "list")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1].split() == ["billing", "events", "0"]


def test_groups_describe_unknown(data_dir: Path) -> None:
    result = invoke(data_dir, "groups", "describe", "nope")

    assert result.exit_code == ExitCode.NOT_FOUND, result.output
    assert "consumer group 'nope' does not exist" in result.stderr


@pytest.mark.parametrize(
    "target, committed, values",
    [("earliest", 0, ["a", "b", "c"]), ("latest", 3, []), ("1", 1, ["b", "c"])],
    ids=["earliest", "latest", "offset"],
)
def test_groups_reset_targets(data_dir: Path, target: str, committed: int, values: list[str]) -> None:
    invoke(data_dir, "produce", "events", "a", "b", "c")
    invoke(data_dir, "consume", "events", "--group", "g", "--count", "2")

    result = invoke(data_dir, "groups", "reset", "g", "--topic", "events", "--to", target, "--json")
    consumed = invoke(data_dir, "consume", "events", "--group", "g", "--json", "--timeout", "0")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["partitions"][0]["committed_offset"] == committed
    assert [m["value"] for m in json_lines(consumed.stdout)] == values


def test_groups_reset_to_time(data_dir: Path) -> None:
    invoke(data_dir, "produce", "events", "old")
    time.sleep(0.01)
    invoke(data_dir, "produce", "events", "new")
    invoke(data_dir, "consume", "events", "--group", "g", "--timeout", "0")
    [_, newer] = json_lines(invoke(data_dir, "replay", "events", "--json").stdout)

    result = invoke(data_dir, "groups", "reset", "g", "--topic", "events", "--to", newer["timestamp"])
    consumed = invoke(data_dir, "consume", "events", "--group", "g", "--timeout", "0")

    assert result.exit_code == 0, result.output
    assert "COMMITTED OFFSET" in result.stdout
    assert consumed.stdout == "0:1 null new\n"


@pytest.mark.parametrize("target", ["-5", "yesterday", "2024-13-01", ""])
def test_groups_reset_bad_target(data_dir: Path, target: str) -> None:
    result = invoke(data_dir, "groups", "reset", "g", "--topic", "events", "--to", target)

    assert result.exit_code == ExitCode.USAGE, result.output
    assert f"{target!r} is not a valid reset target" in result.stderr
    assert "earliest, latest, an offset >= 0 or an ISO 8601 time" in result.stderr


def test_groups_reset_creates_group(data_dir: Path) -> None:
    invoke(data_dir, "produce", "events", "a")

    result = invoke(data_dir, "groups", "reset", "fresh", "--topic", "events", "--to", "latest")
    consumed = invoke(data_dir, "consume", "events", "--group", "fresh", "--timeout", "0")

    assert result.exit_code == 0, result.output
    assert consumed.stdout == ""
    assert [g["group"] for g in json.loads(invoke(data_dir, "groups", "list", "--json").stdout)] == ["fresh"]


def test_groups_reset_unknown_topic(data_dir: Path) -> None:
    result = invoke(data_dir, "groups", "reset", "g", "--topic", "nope", "--to", "earliest")

    assert result.exit_code == ExitCode.NOT_FOUND, result.output
    assert result.stderr.startswith("error: topic 'nope' does not exist")


# -- ingest ------------------------------------------------------------------------------


def test_ingest_strips_terminators(tmp_path: Path, data_dir: Path) -> None:
    first = tmp_path / "first.log"
    second = tmp_path / "second.log"
    first.write_bytes(b"a1\r\na2 \n\na4 unterminated\r")
    second.write_bytes(b"b1\n")
    first_size = first.stat().st_size

    result = invoke(data_dir, "ingest", str(first), str(second), "--topic", "logs")

    assert result.exit_code == 0, result.output
    messages = json_lines(invoke(data_dir, "replay", "logs", "--json").stdout)
    by_key = {key: [m["value"] for m in messages if m["key"] == key] for key in ("first.log", "second.log")}
    assert by_key == {"first.log": ["a1", "a2 ", "", "a4 unterminated\r"], "second.log": ["b1"]}
    assert f"{first}: 4 lines, {first_size} bytes" in result.stdout
    assert f"{second}: 1 line, 3 bytes" in result.stdout
    assert f"ingested 5 lines, {first_size + 3} bytes from 2 files into topic logs" in result.stdout


def test_ingest_keep_newlines_round_trip(tmp_path: Path, data_dir: Path) -> None:
    content = b"one\r\ntwo  \n\n\xff\xfe not utf-8\nlast"
    path = tmp_path / "mixed.log"
    path.write_bytes(content)

    result = invoke(data_dir, "ingest", str(path), "--topic", "logs", "--keep-newlines", "--batch-size", "2")

    assert result.exit_code == 0, result.output
    messages = json_lines(invoke(data_dir, "replay", "logs", "--json").stdout)
    assert len(messages) == 5
    rebuilt = b"".join(
        base64.b64decode(m["value_base64"]) if m["value_format"] == "binary" else m["value"].encode("utf-8")
        for m in messages
    )
    assert rebuilt == content


def test_ingest_missing_file(tmp_path: Path, data_dir: Path) -> None:
    present = tmp_path / "present.log"
    present.write_bytes(b"line\n")
    missing = tmp_path / "missing.log"

    result = invoke(data_dir, "ingest", str(present), str(missing), "--topic", "logs")

    assert result.exit_code == ExitCode.NOT_FOUND, result.output
    assert result.stderr == f"error: {missing}: No such file or directory\n"
    assert json.loads(invoke(data_dir, "topics", "list", "--json").stdout) == []


def test_ingest_directory(tmp_path: Path, data_dir: Path) -> None:
    result = invoke(data_dir, "ingest", str(tmp_path), "--topic", "logs")

    assert result.exit_code == ExitCode.ERROR, result.output
    assert result.stderr == f"error: {tmp_path}: Is a directory\n"


def test_ingest_same_base_name(tmp_path: Path, data_dir: Path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "app.log").write_bytes(b"x\n")

    result = invoke(data_dir, "ingest", str(tmp_path / "a" / "app.log"), str(tmp_path / "b" / "app.log"), "--topic", "t")

    assert result.exit_code == ExitCode.USAGE, result.output
    assert "have the same name 'app.log'" in result.stderr


def test_ingest_bad_batch_size(tmp_path: Path, data_dir: Path) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"x\n")

    result = invoke(data_dir, "ingest", str(path), "--topic", "t", "--batch-size", "0")

    assert result.exit_code == ExitCode.USAGE, result.output
    assert "0 is below the minimum 1" in result.stderr


def test_ingest_follow_tails_lines(tmp_path: Path, data_dir: Path) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"one\ntwo\npar")
    process = subprocess.Popen(
        [*LOGQ, "--data", str(data_dir), "ingest", str(path), "--topic", "tail", "--follow"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )

    with killed_after(process):
        read_line_containing(process.stderr, "following 1 file")
        # Each pause spans several polls, so a partial line sent too early would show as two messages.
        time.sleep(0.6)
        with path.open("ab") as file:
            file.write(b"tial\nthree\n")
        time.sleep(0.6)
        path.rename(tmp_path / "app.log.1")
        path.write_bytes(b"four\nfi")
        replaced = read_line_containing(process.stderr, "file replaced")
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate()

    assert process.returncode == 0, stderr
    assert str(path) in replaced
    assert replayed_values(data_dir, "tail") == ["one", "two", "partial", "three", "four", "fi"]
    assert "ingested 6 lines" in stdout


# -- errors, the lock, help and docs ---------------------------------------------------------


HOLD_LOCK = textwrap.dedent(
    """
    import asyncio, sys
    import logq

    async def main():
        async with logq.open(sys.argv[1]):
            print("locked", flush=True)
            await asyncio.to_thread(sys.stdin.read)

    asyncio.run(main())
    """
)


def test_locked_data_directory(data_dir: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(data_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )

    with killed_after(holder):
        assert holder.stdout.readline() == "locked\n"
        result = invoke(data_dir, "topics", "list")
        holder.stdin.close()
        holder.wait()

    assert result.exit_code == ExitCode.LOCKED, result.output
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"error: data directory {data_dir} is locked by pid {holder.pid} on ")
    assert "Traceback" not in result.output


def test_debug_raises_error(data_dir: Path) -> None:
    plain = invoke(data_dir, "consume", "nope", "--group", "g")
    debug = runner.invoke(app, ["--data", str(data_dir), "--debug", "consume", "nope", "--group", "g"])

    assert plain.exit_code == ExitCode.NOT_FOUND, plain.output
    assert not isinstance(plain.exception, UnknownTopicError)
    assert isinstance(debug.exception, UnknownTopicError)
    assert debug.exit_code == 1


def test_data_option_from_environment(data_dir: Path) -> None:
    produced = runner.invoke(app, ["produce", "events", "a"], env={"LOGQ_DATA": str(data_dir)})

    assert produced.exit_code == 0, produced.output
    assert replayed_values(data_dir, "events") == ["a"]


def test_python_dash_m_runs_cli(data_dir: Path) -> None:
    completed = subprocess.run(
        [*LOGQ, "--data", str(data_dir), "produce", "events", "a"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=PROCESS_TIMEOUT_SECONDS,
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == "0\n"


def leaf_commands(command, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], object]]:
    subcommands = getattr(command, "commands", None)
    if not subcommands:
        yield path, command
        return
    for name, subcommand in subcommands.items():
        yield from leaf_commands(subcommand, (*path, name))


COMMANDS = list(leaf_commands(typer.main.get_command(app)))


def test_command_list_complete() -> None:
    names = sorted(" ".join(path) for path, _ in COMMANDS)

    assert names == [
        "check", "consume", "demo", "dlq list", "dlq purge", "dlq redrive", "dlq show", "groups configure",
        "groups describe", "groups list", "groups reset", "groups skip", "ingest", "peek", "produce", "replay",
        "topics create", "topics delete", "topics describe", "topics list",
    ]


def docs_section(docs: str, heading: str) -> str:
    """Return the text of docs/cli.md from `heading` to the next heading, or "" without that heading."""
    start = docs.find(heading)
    if start < 0:
        return ""
    following = re.search(r"^#", docs[start + len(heading):], flags=re.MULTILINE)
    return docs[start:] if following is None else docs[start:start + len(heading) + following.start()]


@pytest.mark.parametrize("path, command", COMMANDS, ids=[" ".join(path) for path, _ in COMMANDS])
def test_command_help_and_docs(path: tuple[str, ...], command) -> None:
    result = runner.invoke(app, [*path, "--help"])
    heading = f"### `logq {' '.join(path)}`"
    section = docs_section(CLI_DOCS.read_text(encoding="utf-8"), heading)

    assert result.exit_code == 0, result.output
    assert command.help.strip(), "the command has no docstring"
    assert "Example:" in result.stdout
    assert f"logq {' '.join(path)}" in result.stdout.split("Example:")[1]
    for param in command.params:
        if param.name != "help":
            assert getattr(param, "help", None), f"{param.name} has no help text"
    assert section, f"docs/cli.md has no section {heading}"
    for param in command.params:
        for option in [*param.opts, *getattr(param, "secondary_opts", [])]:
            if option.startswith("--") and option != "--help":
                assert re.search(re.escape(option) + r"(?![\w-])", section), f"{option} is not in the docs of {heading}"


def test_exit_codes_documented() -> None:
    docs = CLI_DOCS.read_text(encoding="utf-8")

    for code in ExitCode:
        assert f"| {code.value} | {code.name} |" in docs


def test_produce_stdin_bad_line_keeps_earlier(data_dir: Path) -> None:
    result = invoke(data_dir, "produce", "j", "--json-values", input='1\n"two"\n{bad\n4\n')
    assert result.exit_code == 5, result.output
    assert "line 3" in result.output
    assert replayed_values(data_dir, "j") == [1, "two"]


def test_ingest_oversized_line_keeps_earlier_lines(data_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "app.log"
    source.write_text("first\nsecond\n" + "y" * 80 + "\nafter\n")
    created = invoke(data_dir, "topics", "create", "small", "--max-message-bytes", "50")

    result = invoke(data_dir, "ingest", str(source), "--topic", "small")

    assert created.exit_code == 0, created.output
    assert result.exit_code == 5, result.output
    assert f"line 3 of {source} makes a message of 87 bytes" in result.output
    assert "--max-message-bytes 87" in result.output
    assert replayed_values(data_dir, "small") == ["first", "second"]
