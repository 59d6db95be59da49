"""Edge cases of the `logq` command line's input and human output.

`produce` on standard input must send every line before one that is above the
topic's max message size, wherever that line sits in a read of standard input.
Human output must escape the control characters of message data, and `--json`
must keep them exactly. The tests run the app with Typer's CliRunner, or
`python -m logq` where a pipe or a terminal matters, on data directories in
tmp_path.
"""

import asyncio
import io
import json
import os
import pty
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import logq
from logq.cli import ExitCode, app
from logq.cli_format import display_text, escape_controls
from logq.cli_input import read_stdin_lines
from logq.cli_messages import too_large_line_message

LOGQ = [sys.executable, "-m", "logq"]
PROCESS_TIMEOUT_SECONDS = 30
# Bytes that `produce` reads from standard input at a time.
STDIN_CHUNK_BYTES = 64 * 1024
# A text with the characters a terminal acts on: ESC [ 2 J clears the screen,
# CR returns to the start of the line, NUL, and CSI (U+009B, C1) with DEL.
CONTROL_TEXT = "a\x1b[2J\rb\x00c\x9bd\x7fe\tf"
CONTROL_ESCAPED = "a\\x1b[2J\\rb\\x00c\\x9bd\\x7fe\tf"

runner = CliRunner()


def invoke(data_dir: Path, *args: str, input: bytes | None = None):
    """Run `logq --data DATA_DIR ARGS...` in-process and return the CliRunner result."""
    return runner.invoke(app, ["--data", str(data_dir), *args], input=input)


def create_topic(data_dir: Path, topic: str, max_message_bytes: int, partitions: int = 1) -> None:
    result = invoke(
        data_dir, "topics", "create", topic, "--max-message-bytes", str(max_message_bytes),
        "--partitions", str(partitions),
    )
    assert result.exit_code == 0, result.output


def stored(data_dir: Path, topic: str) -> list[dict]:
    """Return the messages of `topic` as `replay --json` prints them."""
    result = invoke(data_dir, "replay", topic, "--json")
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def stored_values(data_dir: Path, topic: str) -> list[object]:
    return [message["value"] for message in stored(data_dir, topic)]


def stored_offsets(data_dir: Path, topic: str) -> list[int]:
    return [message["offset"] for message in stored(data_dir, topic)]


def lines_of(*lines: bytes) -> bytes:
    return b"".join(line + b"\n" for line in lines)


# -- produce: a line above the max message size -----------------------------------------

MAX = 100
FITS = b"m" * MAX
TOO_LARGE = b"x" * (MAX + 1)


@pytest.mark.parametrize(
    "lines, sent_count, failing_line",
    [
        ([TOO_LARGE, b"a", b"b"], 0, 1),
        ([b"a", b"b", TOO_LARGE, b"c", b"d"], 2, 3),
        ([b"a", b"b", b"c", TOO_LARGE], 3, 4),
    ],
    ids=["first", "middle", "last"],
)
def test_produce_too_large_line_position(data_dir: Path, lines: list[bytes], sent_count: int, failing_line: int) -> None:
    create_topic(data_dir, "small", MAX)

    result = invoke(data_dir, "produce", "small", input=lines_of(*lines))

    assert result.exit_code == ExitCode.INVALID, result.output
    assert result.stdout.splitlines() == [str(offset) for offset in range(sent_count)]
    assert stored_values(data_dir, "small") == [line.decode() for line in lines[:sent_count]]
    assert stored_offsets(data_dir, "small") == list(range(sent_count))
    assert f"error: line {failing_line} of standard input makes a message of {MAX + 1} bytes," in result.stderr
    assert f"max message size of topic 'small' ({MAX} bytes)" in result.stderr
    assert "--max-message-bytes 101" in result.stderr


def test_produce_line_exactly_max_is_sent(data_dir: Path) -> None:
    create_topic(data_dir, "small", MAX)

    result = invoke(data_dir, "produce", "small", input=lines_of(b"a", FITS, b"b"))

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["0", "1", "2"]
    assert stored_values(data_dir, "small") == ["a", FITS.decode(), "b"]


def test_produce_max_then_max_plus_one(data_dir: Path) -> None:
    create_topic(data_dir, "small", MAX)

    result = invoke(data_dir, "produce", "small", input=lines_of(FITS, TOO_LARGE, FITS))

    assert result.exit_code == ExitCode.INVALID, result.output
    assert stored_values(data_dir, "small") == [FITS.decode()]
    assert "line 2 of standard input" in result.stderr
    assert "line 1 was sent, line 2 and the lines after it were not" in result.stderr


def test_produce_too_large_unterminated_line(data_dir: Path) -> None:
    create_topic(data_dir, "small", MAX)

    result = invoke(data_dir, "produce", "small", input=b"a\nb\n" + TOO_LARGE)

    assert result.exit_code == ExitCode.INVALID, result.output
    assert stored_values(data_dir, "small") == ["a", "b"]
    assert "line 3 of standard input" in result.stderr
    assert "lines 1 to 2 were sent" in result.stderr


def test_produce_size_counts_key_headers(data_dir: Path) -> None:
    create_topic(data_dir, "small", MAX)
    # The key "k" and the header "h=v" take 3 of the 100 bytes.
    fits = b"m" * (MAX - 3)
    too_large = b"x" * (MAX - 2)

    result = invoke(
        data_dir, "produce", "small", "--key", "k", "-H", "h=v", input=lines_of(fits, fits, too_large, b"after"),
    )

    assert result.exit_code == ExitCode.INVALID, result.output
    assert stored_values(data_dir, "small") == [fits.decode(), fits.decode()]
    assert stored_offsets(data_dir, "small") == [0, 1]
    assert f"line 3 of standard input makes a message of {MAX + 1} bytes with its key and headers" in result.stderr


def test_produce_too_large_keyed_partitions(data_dir: Path) -> None:
    create_topic(data_dir, "wide", MAX, partitions=3)

    result = invoke(data_dir, "produce", "wide", "--key", "customer-7", input=lines_of(b"a", b"b", TOO_LARGE, b"c"))

    messages = stored(data_dir, "wide")
    assert result.exit_code == ExitCode.INVALID, result.output
    assert [message["value"] for message in messages] == ["a", "b"]
    assert [message["offset"] for message in messages] == [0, 1]
    assert len({message["partition"] for message in messages}) == 1


def test_produce_too_large_json_value(data_dir: Path) -> None:
    create_topic(data_dir, "small", 10)
    # The size that counts is that of the compact JSON: [1,2,3] is 7 bytes, "0123456789" is 12.
    spaced = b"[1,     2,     3]"

    result = invoke(data_dir, "produce", "small", "--json-values", input=lines_of(spaced, b'"0123456789"', b"1"))

    assert result.exit_code == ExitCode.INVALID, result.output
    assert stored_values(data_dir, "small") == [[1, 2, 3]]
    assert "line 2 of standard input makes a message of 12 bytes" in result.stderr


def test_produce_too_large_before_invalid_json(data_dir: Path) -> None:
    create_topic(data_dir, "small", 10)

    result = invoke(data_dir, "produce", "small", "--json-values", input=lines_of(b"1", b'"0123456789"', b"{oops"))

    assert result.exit_code == ExitCode.INVALID, result.output
    assert stored_values(data_dir, "small") == [1]
    assert "line 2 of standard input makes a message of 12 bytes" in result.stderr
    assert "not valid JSON" not in result.stderr


def test_produce_invalid_json_before_too_large(data_dir: Path) -> None:
    create_topic(data_dir, "small", 10)

    result = invoke(data_dir, "produce", "small", "--json-values", input=lines_of(b"1", b"{oops", b'"0123456789"'))

    assert result.exit_code == ExitCode.INVALID, result.output
    assert stored_values(data_dir, "small") == [1]
    assert "line 2 of standard input '{oops' is not valid JSON" in result.stderr


def test_produce_too_large_line_across_chunks(data_dir: Path) -> None:
    limit = 70_000
    create_topic(data_dir, "big", limit)
    # The lines before fill most of the first read, so the oversized line
    # starts in it and ends two reads later.
    before = [b"%05d" % n + b"." * 994 for n in range(60)]
    too_large = b"x" * (limit + 1)
    data = lines_of(*before, too_large, b"after")
    assert len(lines_of(*before)) < STDIN_CHUNK_BYTES < len(lines_of(*before, too_large))

    result = invoke(data_dir, "produce", "big", input=data)

    assert result.exit_code == ExitCode.INVALID, result.output
    assert stored_values(data_dir, "big") == [line.decode() for line in before]
    assert stored_offsets(data_dir, "big") == list(range(60))
    assert f"line 61 of standard input makes a message of {limit + 1} bytes" in result.stderr


def test_produce_max_line_across_chunks(data_dir: Path) -> None:
    limit = 3 * STDIN_CHUNK_BYTES
    create_topic(data_dir, "big", limit)
    fits = b"m" * limit

    result = invoke(data_dir, "produce", "big", input=lines_of(b"a", fits, b"b", b"x" * (limit + 1), b"c"))

    assert result.exit_code == ExitCode.INVALID, result.output
    assert stored_values(data_dir, "big") == ["a", fits.decode(), "b"]
    assert "line 4 of standard input" in result.stderr


def test_produce_too_large_pipe_pieces(data_dir: Path) -> None:
    create_topic(data_dir, "small", MAX)
    process = subprocess.Popen(
        [*LOGQ, "--data", str(data_dir), "produce", "small"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    timer = threading.Timer(PROCESS_TIMEOUT_SECONDS, process.kill)
    timer.start()
    try:
        # The first read completes two lines, which are sent before the rest arrives.
        process.stdin.write(b"a\nb\n")
        process.stdin.flush()
        first_offsets = [process.stdout.readline(), process.stdout.readline()]
        # The next lines and the oversized one arrive in pieces, so a read ends inside it.
        process.stdin.write(b"c\nd\n" + TOO_LARGE[:50])
        process.stdin.flush()
        time.sleep(0.2)
        process.stdin.write(TOO_LARGE[50:] + b"\ne\n")
        process.stdin.close()
        rest = process.stdout.read()
        stderr = process.stderr.read().decode()
        process.wait()
    finally:
        timer.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()

    assert first_offsets == [b"0\n", b"1\n"]
    assert rest == b"2\n3\n"
    assert process.returncode == ExitCode.INVALID, stderr
    assert "line 5 of standard input makes a message of 101 bytes" in stderr
    assert "lines 1 to 4 were sent, line 5 and the lines after it were not" in stderr
    assert stored_values(data_dir, "small") == ["a", "b", "c", "d"]
    assert stored_offsets(data_dir, "small") == [0, 1, 2, 3]


def test_too_large_message_above_any_topic() -> None:
    limit = 1024 * 1024
    size = 64 * 1024 * 1024 + 1

    message = too_large_line_message("app-log", 3, size, limit, 0)

    assert message.startswith(f"line 3 of standard input makes a message of {size} bytes, above the max")
    assert "because no topic accepts a message that large" in message
    assert "--max-message-bytes" not in message


def test_produce_too_large_argument_sends_nothing(data_dir: Path) -> None:
    create_topic(data_dir, "small", MAX)

    result = invoke(data_dir, "produce", "small", "a", TOO_LARGE.decode())

    assert result.exit_code == ExitCode.INVALID, result.output
    assert stored_values(data_dir, "small") == []


# -- read_stdin_lines -------------------------------------------------------------------


async def collect_lines(data: bytes, chunk_bytes: int) -> list[list[bytes]]:
    return [lines async for lines in read_stdin_lines(io.BytesIO(data), chunk_bytes)]


async def test_read_stdin_lines_long_line_is_whole() -> None:
    # Every byte value except LF, with CR in the middle of the line.
    long_line = bytes(range(11, 256)) * 40

    batches = await collect_lines(b"a\n" + long_line + b"\nb\nc", chunk_bytes=7)

    assert [line for batch in batches for line in batch] == [b"a", long_line, b"b", b"c"]


async def test_read_stdin_lines_crlf_split_by_chunk() -> None:
    batches = await collect_lines(b"ab\r\ncd\r\n", chunk_bytes=3)

    assert [line for batch in batches for line in batch] == [b"ab", b"cd"]


async def test_read_stdin_lines_one_list_per_read() -> None:
    batches = await collect_lines(b"a\nb\nc\n", chunk_bytes=1024)

    assert batches == [[b"a", b"b", b"c"]]


# -- human output escapes control characters -------------------------------------------


def test_escape_controls_each_class() -> None:
    assert escape_controls("\x00\x1f") == "\\x00\\x1f"
    assert escape_controls("\x7f") == "\\x7f"
    assert escape_controls("\x80\x9f") == "\\x80\\x9f"
    assert escape_controls("\r\n") == "\\r\\n"
    assert escape_controls("\t") == "\t"
    assert escape_controls("\xa0é€ \\x1b") == "\xa0é€ \\x1b"


def test_display_text_invalid_utf8() -> None:
    # A lone 0x9b byte is invalid UTF-8, so it becomes U+FFFD and not a C1 control.
    assert display_text(b"a\x9b\x1b\r\n") == "a\ufffd\\x1b"


async def send_control_message(data_dir: Path, topic: str = "events") -> None:
    """Store one message whose key, value and header contain control characters."""
    async with logq.open(data_dir) as log:
        await log.send(topic, CONTROL_TEXT.encode(), key=CONTROL_TEXT, headers={CONTROL_TEXT: CONTROL_TEXT})


def assert_no_control(text: str) -> None:
    for character in ("\x1b", "\r", "\x00", "\x9b", "\x7f"):
        assert character not in text, f"{character!r} reached the output: {text!r}"


def assert_json_message_exact(message: dict) -> None:
    assert message["key"] == CONTROL_TEXT
    assert message["value"] == CONTROL_TEXT
    assert message["value_format"] == "text"
    assert message["headers"] == {CONTROL_TEXT: CONTROL_TEXT}


def test_consume_text_escapes_controls(data_dir: Path) -> None:
    asyncio.run(send_control_message(data_dir))

    result = invoke(data_dir, "consume", "events", "--group", "g", "--no-ack")

    assert result.exit_code == 0, result.output
    assert result.stdout == f"0:0 {CONTROL_ESCAPED} {CONTROL_ESCAPED}\n"
    assert_no_control(result.stdout)


def test_consume_json_keeps_controls(data_dir: Path) -> None:
    asyncio.run(send_control_message(data_dir))

    result = invoke(data_dir, "consume", "events", "--group", "g", "--json")

    assert result.exit_code == 0, result.output
    [line] = result.stdout.splitlines()
    assert_json_message_exact(json.loads(line))


def test_peek_and_replay_text_escape_controls(data_dir: Path) -> None:
    asyncio.run(send_control_message(data_dir))
    invoke(data_dir, "groups", "configure", "g", "--max-deliveries", "3")

    peeked = invoke(data_dir, "peek", "events", "--group", "g")
    replayed = invoke(data_dir, "replay", "events")

    assert peeked.exit_code == 0, peeked.output
    assert peeked.stdout == f"0:0 {CONTROL_ESCAPED} {CONTROL_ESCAPED}\n"
    assert replayed.exit_code == 0, replayed.output
    assert replayed.stdout == f"0:0 {CONTROL_ESCAPED} {CONTROL_ESCAPED}\n"


def test_peek_and_replay_json_keep_controls(data_dir: Path) -> None:
    asyncio.run(send_control_message(data_dir))
    invoke(data_dir, "groups", "configure", "g", "--max-deliveries", "3")

    peeked = invoke(data_dir, "peek", "events", "--group", "g", "--json")
    replayed = invoke(data_dir, "replay", "events", "--json")

    assert peeked.exit_code == 0, peeked.output
    assert_json_message_exact(json.loads(peeked.stdout))
    assert replayed.exit_code == 0, replayed.output
    assert_json_message_exact(json.loads(replayed.stdout))


def dead_letter_control_message(data_dir: Path) -> None:
    """Dead-letter the control message of topic `events` in group `g` by one nack."""
    asyncio.run(send_control_message(data_dir))
    configured = invoke(data_dir, "groups", "configure", "g", "--max-deliveries", "1")
    nacked = invoke(data_dir, "consume", "events", "--group", "g", "--nack", "--timeout", "0")
    assert configured.exit_code == 0, configured.output
    assert nacked.exit_code == 0, nacked.output


def test_dlq_show_text_escapes_controls(data_dir: Path) -> None:
    dead_letter_control_message(data_dir)

    result = invoke(data_dir, "dlq", "show", "events", "--group", "g", "0")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert f"key             {CONTROL_ESCAPED}" in lines
    assert f"  {CONTROL_ESCAPED}: {CONTROL_ESCAPED}" in lines
    assert lines[-2:] == ["value:", CONTROL_ESCAPED]
    assert_no_control(result.stdout)


def test_dlq_show_json_keeps_controls(data_dir: Path) -> None:
    dead_letter_control_message(data_dir)

    result = invoke(data_dir, "dlq", "show", "events", "--group", "g", "0", "--json")

    assert result.exit_code == 0, result.output
    message = json.loads(result.stdout)["message"]
    assert message["key"] == CONTROL_TEXT
    assert message["value"] == CONTROL_TEXT
    assert message["headers"][CONTROL_TEXT] == CONTROL_TEXT


async def send_forged_dead_letter(data_dir: Path) -> None:
    """Append a dead letter of `events` for group `g` whose reason and failure time contain control characters."""
    async with logq.open(data_dir) as log:
        await log.configure_group("g", max_deliveries=1)
        await log.send("events", b"payload")
        await log.send("events.g.dlq", b"payload", headers={
            "logq.dlq.topic": "events",
            "logq.dlq.partition": "0",
            "logq.dlq.offset": "0",
            "logq.dlq.group": "g",
            "logq.dlq.reason": CONTROL_TEXT,
            "logq.dlq.delivery_count": "1",
            "logq.dlq.first_failure": CONTROL_TEXT,
            "logq.dlq.last_failure": CONTROL_TEXT,
        })


def test_dlq_list_and_show_escape_reason(data_dir: Path) -> None:
    asyncio.run(send_forged_dead_letter(data_dir))

    dlq_list = invoke(data_dir, "dlq", "list", "events", "--group", "g")
    dlq_show = invoke(data_dir, "dlq", "show", "events", "--group", "g", "0")

    assert dlq_list.exit_code == 0, dlq_list.output
    assert f"{CONTROL_ESCAPED}  {CONTROL_ESCAPED}" in dlq_list.stdout.splitlines()[1]
    assert_no_control(dlq_list.stdout)
    assert dlq_show.exit_code == 0, dlq_show.output
    dlq_show_lines = dlq_show.stdout.splitlines()
    assert f"reason          {CONTROL_ESCAPED}" in dlq_show_lines
    assert f"first failure   {CONTROL_ESCAPED}" in dlq_show_lines
    assert f"last failure    {CONTROL_ESCAPED}" in dlq_show_lines
    assert_no_control(dlq_show.stdout)


def test_dlq_list_json_keeps_reason(data_dir: Path) -> None:
    asyncio.run(send_forged_dead_letter(data_dir))

    result = invoke(data_dir, "dlq", "list", "events", "--group", "g", "--json")

    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert row["reason"] == CONTROL_TEXT
    assert row["last_failure"] == CONTROL_TEXT


def test_consume_on_terminal_escapes_controls(data_dir: Path) -> None:
    # On a terminal Click passes ESC sequences through, where on a pipe it strips some of them.
    asyncio.run(send_control_message(data_dir))
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [*LOGQ, "--data", str(data_dir), "consume", "events", "--group", "g", "--timeout", "0"],
        stdin=subprocess.DEVNULL, stdout=terminal, stderr=subprocess.PIPE,
    )
    os.close(terminal)
    # Killing a hung child closes the terminal, which ends the reads below.
    timer = threading.Timer(PROCESS_TIMEOUT_SECONDS, process.kill)
    timer.start()

    output = b""
    try:
        while True:
            try:
                data = os.read(controller, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            output += data
        process.wait(timeout=PROCESS_TIMEOUT_SECONDS)
    finally:
        timer.cancel()
        os.close(controller)
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 0, process.stderr.read()
    # The terminal turns LF into CR LF on output.
    assert output.decode() == f"0:0 {CONTROL_ESCAPED} {CONTROL_ESCAPED}\r\n"
