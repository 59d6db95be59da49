"""Table-driven tests of bad input: every API argument and CLI option a user passes.

Each API row must raise a `LogqError` subclass (never a bare TypeError,
ValueError, AttributeError or KeyError) whose message names the bad value and
what to pass instead. Each CLI row must exit with its documented code and
print an error line that names the value, without a traceback. After the bad
calls the data directory must still hold every message sent before them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import logq
from logq.cli import ExitCode, app

# Words that introduce the fix in an error message.
HINT_WORDS = ("use ", "pass ", "must be", "valid ", "create ", "pick ", "send ", "expected ", "see ")
STORED_VALUES = [f"kept-{i}" for i in range(5)]

Call = Callable[[logq.Log], Awaitable[Any]]


@dataclass(frozen=True)
class ApiCase:
    """One bad API call: what it does, the error type and a text its message must contain."""

    name: str
    call: Call
    error: type[logq.LogqError]
    shown: str


async def _receive(log: logq.Log, **arguments: Any) -> Any:
    consumer = log.consumer("t", group="g", auto_ack=False)
    try:
        return await consumer.receive(**arguments)
    finally:
        await consumer.close()


async def _on_leased(log: logq.Log, action: Callable[[logq.Consumer, logq.Message], Awaitable[Any]]) -> Any:
    consumer = log.consumer("t", group="g", auto_ack=False)
    try:
        [message] = await consumer.receive(1)
        return await action(consumer, message)
    finally:
        await consumer.close()


async def _replay(log: logq.Log, **arguments: Any) -> list[logq.Message]:
    return [message async for message in log.replay("t", **arguments)]


def _api(name: str, call: Call, error: type[logq.LogqError], shown: str) -> ApiCase:
    return ApiCase(name, call, error, shown)


Invalid = logq.InvalidArgumentError
BadName = logq.InvalidNameError
BadConfig = logq.InvalidConfigError

API_CASES = [
    # Topic names.
    _api("topic-empty", lambda log: log.create_topic(""), BadName, "''"),
    _api("topic-slash", lambda log: log.create_topic("a/b"), BadName, "'a/b'"),
    _api("topic-dotdot", lambda log: log.create_topic(".."), BadName, "'..'"),
    _api("topic-long", lambda log: log.create_topic("x" * 201), BadName, "201"),
    _api("topic-int", lambda log: log.create_topic(5), BadName, "5"),  # type: ignore[arg-type]
    _api("topic-control", lambda log: log.create_topic("a\x00b"), BadName, "'a\\x00b'"),
    _api("topic-space", lambda log: log.create_topic(" a"), BadName, "' a'"),
    _api("send-topic-slash", lambda log: log.send("../t", b"v"), BadName, "'../t'"),
    _api("describe-topic-slash", lambda log: _sync(log.describe_topic, "a/b"), BadName, "'a/b'"),
    # Topic settings.
    _api("partitions-zero", lambda log: log.create_topic("n", partitions=0), BadConfig, "partitions=0"),
    _api("partitions-str", lambda log: log.create_topic("n", partitions="2"), BadConfig, "'2'"),
    _api("partitions-many", lambda log: log.create_topic("n", partitions=1025), BadConfig, "1025"),
    _api("segment-bytes-small", lambda log: log.create_topic("n", segment_bytes=100), BadConfig, "100"),
    _api("compression-lz4", lambda log: log.create_topic("n", compression="lz4"), BadConfig, "'lz4'"),
    _api("fsync-bad", lambda log: log.create_topic("n", fsync="sometimes"), BadConfig, "'sometimes'"),
    _api("fsync-interval-zero", lambda log: log.create_topic("n", fsync_interval_ms=0), BadConfig, "=0"),
    _api("max-message-zero", lambda log: log.create_topic("n", max_message_bytes=0), BadConfig, "=0"),
    _api("max-message-float", lambda log: log.create_topic("n", max_message_bytes=1.5), BadConfig, "1.5"),
    _api("retention-bytes-zero", lambda log: log.create_topic("n", retention_bytes=0), BadConfig, "=0"),
    _api("retention-ms-negative", lambda log: log.create_topic("n", retention_ms=-1), BadConfig, "-1"),
    _api("topic-setting-unknown", lambda log: log.create_topic("n", bogus=1), Invalid, "bogus"),
    # Send arguments.
    _api("value-nan", lambda log: log.send("t", {"ratio": math.nan}), Invalid, "nan"),
    _api("value-inf-nested", lambda log: log.send("t", [1, {"max": [math.inf]}]), Invalid, "inf"),
    _api("batch-value-nan", lambda log: log.send_batch("t", [{"a": 1}, math.nan]), Invalid, "nan"),
    _api("priority-negative", lambda log: log.send("t", b"v", priority=-1), Invalid, "-1"),
    _api("priority-256", lambda log: log.send("t", b"v", priority=256), Invalid, "256"),
    _api("priority-str", lambda log: log.send("t", b"v", priority="1"), Invalid, "'1'"),  # type: ignore[arg-type]
    _api("priority-bool", lambda log: log.send("t", b"v", priority=True), Invalid, "True"),
    _api("key-int", lambda log: log.send("t", b"v", key=5), Invalid, "5"),  # type: ignore[arg-type]
    _api("key-surrogate", lambda log: log.send("t", b"v", key="\ud800"), Invalid, "'\\ud800'"),
    _api("headers-list", lambda log: log.send("t", b"v", headers=[("a", "b")]), Invalid, "list"),  # type: ignore[arg-type]
    _api("header-name-int", lambda log: log.send("t", b"v", headers={5: "b"}), Invalid, "5"),  # type: ignore[dict-item]
    _api("header-name-empty", lambda log: log.send("t", b"v", headers={"": "b"}), Invalid, "''"),
    _api("header-value-int", lambda log: log.send("t", b"v", headers={"h": 7}), Invalid, "7"),  # type: ignore[dict-item]
    _api("header-surrogate", lambda log: log.send("t", b"v", headers={"h": "\udc00"}), Invalid, "'h'"),
    _api("value-object", lambda log: log.send("t", object()), Invalid, "object"),
    _api("value-float-key", lambda log: log.send("t", {1.5: "x"}), Invalid, "dict"),
    _api("value-too-large", lambda log: log.send("small", b"x" * 2000), logq.MessageTooLargeError, "2000"),
    _api("value-json-too-large", lambda log: log.send("small", "x" * 2000), logq.MessageTooLargeError, "2002"),
    _api("partition-missing", lambda log: log.send("t", b"v", partition=5), Invalid, "5"),
    _api("partition-negative", lambda log: log.send("t", b"v", partition=-1), Invalid, "-1"),
    _api("partition-str", lambda log: log.send("t", b"v", partition="0"), Invalid, "'0'"),  # type: ignore[arg-type]
    _api("batch-int", lambda log: log.send_batch("t", 5), Invalid, "5"),  # type: ignore[arg-type]
    _api("batch-str", lambda log: log.send_batch("t", "abc"), Invalid, "'abc'"),  # type: ignore[arg-type]
    _api("batch-bytes", lambda log: log.send_batch("t", b"abc"), Invalid, "b'abc'"),  # type: ignore[arg-type]
    _api("batch-bad-item", lambda log: log.send_batch("t", [b"ok", object()]), Invalid, "object"),
    _api("batch-item-large", lambda log: log.send_batch("small", [b"ok", b"y" * 5000]), logq.MessageTooLargeError, "5000"),
    # Consumers and receive.
    _api("group-empty", lambda log: _sync(log.consumer, "t", group=""), BadName, "''"),
    _api("group-slash", lambda log: _sync(log.consumer, "t", group="a/b"), BadName, "'a/b'"),
    _api("group-int", lambda log: _sync(log.consumer, "t", group=3), BadName, "3"),
    _api("auto-ack-str", lambda log: _sync(log.consumer, "t", group="g", auto_ack="yes"), Invalid, "'yes'"),
    _api("start-bad", lambda log: _sync(log.consumer, "t", group="g", start="middle"), Invalid, "'middle'"),
    _api("prefetch-zero", lambda log: _sync(log.consumer, "t", group="g", prefetch=0), Invalid, "0"),
    _api("consumer-topic-missing", lambda log: _sync(log.consumer, "nope", group="g"), logq.UnknownTopicError, "'nope'"),
    _api("receive-count-zero", lambda log: _receive(log, max_messages=0), Invalid, "0"),
    _api("receive-count-float", lambda log: _receive(log, max_messages=1.5), Invalid, "1.5"),
    _api("receive-timeout-negative", lambda log: _receive(log, timeout=-1), Invalid, "-1"),
    _api("receive-timeout-nan", lambda log: _receive(log, timeout=math.nan), Invalid, "nan"),
    _api("receive-timeout-str", lambda log: _receive(log, timeout="1"), Invalid, "'1'"),
    _api("receive-lease-zero", lambda log: _receive(log, lease=0), Invalid, "0"),
    _api("receive-lease-inf", lambda log: _receive(log, lease=math.inf), Invalid, "inf"),
    _api("nack-delay-negative", lambda log: _on_leased(log, lambda c, m: c.nack(m, delay=-2)), Invalid, "-2"),
    _api("nack-delay-str", lambda log: _on_leased(log, lambda c, m: c.nack(m, delay="1")), Invalid, "'1'"),
    _api("extend-negative", lambda log: _on_leased(log, lambda c, m: c.extend(m, seconds=-3)), Invalid, "-3"),
    _api("extend-huge", lambda log: _on_leased(log, lambda c, m: c.extend(m, seconds=1e12)), Invalid, "1000000000000"),
    _api("receive-lease-huge", lambda log: _receive(log, lease=1e12), Invalid, "1000000000000"),
    _api("extend-nan", lambda log: _on_leased(log, lambda c, m: c.extend(m, seconds=math.nan)), Invalid, "nan"),
    _api("reject-reason-empty", lambda log: _on_leased(log, lambda c, m: c.reject(m, reason="")), Invalid, "''"),
    _api("ack-not-message", lambda log: _on_leased(log, lambda c, m: c.ack("x")), Invalid, "'x'"),
    _api("nack-not-message", lambda log: _on_leased(log, lambda c, m: c.nack(7)), Invalid, "7"),
    _api("peek-count-zero", lambda log: log.peek("t", group="g", max_messages=0), Invalid, "0"),
    _api("peek-group-missing", lambda log: log.peek("t", group="never"), logq.UnknownGroupError, "'never'"),
    # Replay and reset by offset or time.
    _api("replay-offset-negative", lambda log: _replay(log, from_offset=-1), Invalid, "-1"),
    _api("replay-offset-str", lambda log: _replay(log, from_offset="1"), Invalid, "'1'"),
    _api("replay-both-starts", lambda log: _replay(log, from_offset=0, from_time=0), Invalid, "from_time"),
    _api("replay-time-str", lambda log: _replay(log, from_time="yesterday"), Invalid, "'yesterday'"),
    _api("replay-time-negative", lambda log: _replay(log, from_time=-5), Invalid, "-5"),
    _api("replay-time-naive", lambda log: _replay(log, from_time=datetime(2024, 1, 1)), Invalid, "2024-01-01"),
    _api("replay-partition", lambda log: _replay(log, partition=3), Invalid, "3"),
    _api("reset-target-str", lambda log: log.reset_group("g", "t", to="middle"), Invalid, "'middle'"),
    _api("reset-target-float", lambda log: log.reset_group("g", "t", to=1.5), Invalid, "1.5"),  # type: ignore[arg-type]
    _api("reset-time-naive", lambda log: log.reset_group("g", "t", to=datetime(2024, 1, 1)), Invalid, "2024-01-01"),
    _api("reset-group-slash", lambda log: log.reset_group("a/b", "t", to="earliest"), BadName, "'a/b'"),
    _api("reset-topic-missing", lambda log: log.reset_group("g", "nope", to="earliest"), logq.UnknownTopicError, "'nope'"),
    _api("skip-partition", lambda log: log.skip_messages("g", "t", partition=3, start=0, end=1), Invalid, "partition 3"),
    _api("skip-start-negative", lambda log: log.skip_messages("g", "t", partition=0, start=-1, end=1), Invalid, "-1"),
    _api("skip-end-str", lambda log: log.skip_messages("g", "t", partition=0, start=0, end="2"), Invalid, "'2'"),  # type: ignore[arg-type]
    _api("skip-empty-range", lambda log: log.skip_messages("g", "t", partition=0, start=2, end=2), Invalid, "use end 3"),
    _api("skip-group-unread", lambda log: log.skip_messages("g", "t", partition=0, start=0, end=1), Invalid, "'g'"),
    _api("skip-group-slash", lambda log: log.skip_messages("a/b", "t", partition=0, start=0, end=1), BadName, "'a/b'"),
    _api("skip-topic-missing", lambda log: log.skip_messages("g", "nope", partition=0, start=0, end=1),
         logq.UnknownTopicError, "'nope'"),
    # Group settings.
    _api("lease-timeout-zero", lambda log: log.configure_group("g", lease_timeout=0), BadConfig, "lease_timeout=0"),
    _api("lease-timeout-str", lambda log: log.configure_group("g", lease_timeout="1"), BadConfig, "'1'"),
    _api("lease-timeout-nan", lambda log: log.configure_group("g", lease_timeout=math.nan), BadConfig, "nan"),
    _api("max-deliveries-negative", lambda log: log.configure_group("g", max_deliveries=-1), BadConfig, "-1"),
    _api("max-deliveries-float", lambda log: log.configure_group("g", max_deliveries=1.5), BadConfig, "1.5"),
    _api("retry-delay-negative", lambda log: log.configure_group("g", retry_delay=-1), BadConfig, "-1"),
    _api("retry-backoff-small", lambda log: log.configure_group("g", retry_backoff=0.5), BadConfig, "0.5"),
    _api("retry-max-delay-inf", lambda log: log.configure_group("g", retry_max_delay=math.inf), BadConfig, "inf"),
    _api("key-ordering-str", lambda log: log.configure_group("g", key_ordering="yes"), BadConfig, "'yes'"),
    _api("starvation-zero", lambda log: log.configure_group("g", starvation_limit=0), BadConfig, "0"),
    _api("dead-letter-topic-slash", lambda log: log.configure_group("g", dead_letter_topic="a/b"), BadName, "'a/b'"),
    _api("dead-letter-topic-read", lambda log: _configure_after_read(log), BadConfig, "'t'"),
    _api("group-setting-unknown", lambda log: log.configure_group("g", lease=1), BadConfig, "lease"),
    _api("describe-group-slash", lambda log: log.describe_group("../g"), BadName, "'../g'"),
    _api("group-config-missing", lambda log: log.group_config("never"), logq.UnknownGroupError, "'never'"),
    _api("dead-letters-group-slash", lambda log: log.dead_letters("t", group="a/b"), BadName, "'a/b'"),
    _api("redrive-topic-missing", lambda log: log.redrive("nope", group="g"), logq.UnknownTopicError, "'nope'"),
    _api("redrive-offsets-str", lambda log: log.redrive("t", group="g", offsets="12"), Invalid, "'12'"),
    _api("redrive-offsets-negative", lambda log: log.redrive("t", group="g", offsets=[-1]), Invalid, "-1"),
]


async def _sync(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return function(*args, **kwargs)


async def _configure_after_read(log: logq.Log) -> Any:
    await _receive(log, max_messages=1)
    return await log.configure_group("g", dead_letter_topic="t")


async def _prepare(log: logq.Log) -> None:
    await log.create_topic("small", max_message_bytes=1000)
    await log.send_batch("t", STORED_VALUES)
    await log.configure_group("g")


async def _assert_stored(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        replayed = [message.value async for message in log.replay("t")]
        assert replayed == STORED_VALUES
        assert log.describe_topic("small").messages == 0
        assert "n" not in log.list_topics()


@pytest.mark.parametrize("case", API_CASES, ids=[case.name for case in API_CASES])
async def test_api_bad_value(data_dir: Path, case: ApiCase) -> None:
    async with logq.open(data_dir) as log:
        await _prepare(log)
        with pytest.raises(logq.LogqError) as caught:
            await case.call(log)

    error = caught.value
    message = str(error)
    assert isinstance(error, case.error), f"{type(error).__name__}: {message}"
    assert case.shown in message
    assert any(word in message for word in HINT_WORDS), message
    await _assert_stored(data_dir)


@pytest.mark.parametrize(
    ("arguments", "shown"),
    [
        ({"group_fsync": "sometimes"}, "'sometimes'"),
        ({"auto_create_topics": "no"}, "'no'"),
        ({"clock": 5.0}, "5.0"),
    ],
    ids=["group-fsync", "auto-create", "clock"],
)
async def test_open_bad_argument(data_dir: Path, arguments: dict[str, Any], shown: str) -> None:
    with pytest.raises(logq.InvalidArgumentError) as caught:
        logq.open(data_dir, **arguments)
    assert shown in str(caught.value)
    assert any(word in str(caught.value) for word in HINT_WORDS)
    assert not data_dir.exists()


async def test_open_file_as_dir(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"not a directory")
    with pytest.raises(logq.LogqError) as caught:
        await logq.open(path)
    assert str(path) in str(caught.value)
    assert path.read_bytes() == b"not a directory"


async def test_bad_send_stores_nothing(data_dir: Path) -> None:
    async with logq.open(data_dir) as log:
        await log.create_topic("p", partitions=3)
        await log.send_batch("p", [b"a", b"b", b"c"])
        before = [p.log_end_offset for p in log.describe_topic("p").partitions]
        with pytest.raises(logq.InvalidArgumentError):
            await log.send_batch("p", [b"ok", b"ok", {"bad": object()}])
        with pytest.raises(logq.MessageTooLargeError):
            await log.send_batch("p", [b"ok"] * 5 + [b"z" * (2 * 1024 * 1024)])
        after = [p.log_end_offset for p in log.describe_topic("p").partitions]
        assert after == before


# -- command line --------------------------------------------------------------------

runner = CliRunner()


@dataclass(frozen=True)
class CliCase:
    """One bad command line: its arguments, the exit code and a text its error line must contain."""

    name: str
    args: tuple[str, ...]
    code: ExitCode
    shown: str


def _cli(name: str, code: ExitCode, shown: str, *args: str) -> CliCase:
    return CliCase(name, args, code, shown)


USAGE, INVALID, NOT_FOUND = ExitCode.USAGE, ExitCode.INVALID, ExitCode.NOT_FOUND

CLI_CASES = [
    _cli("create-name-slash", INVALID, "'a/b'", "topics", "create", "a/b"),
    _cli("create-name-dotdot", INVALID, "'..'", "topics", "create", ".."),
    _cli("create-partitions-zero", INVALID, "partitions=0", "topics", "create", "n", "--partitions", "0"),
    _cli("create-partitions-text", USAGE, "'two'", "topics", "create", "n", "--partitions", "two"),
    _cli("create-segment-small", INVALID, "100", "topics", "create", "n", "--segment-bytes", "100"),
    _cli("create-compression", USAGE, "'gzip'", "topics", "create", "n", "--compression", "gzip"),
    _cli("create-fsync", USAGE, "'sometimes'", "topics", "create", "n", "--fsync", "sometimes"),
    _cli("create-interval-zero", INVALID, "fsync_interval_ms=0", "topics", "create", "n", "--fsync-interval-ms", "0"),
    _cli("create-max-message", INVALID, "max_message_bytes=0", "topics", "create", "n", "--max-message-bytes", "0"),
    _cli("create-retention-bytes", INVALID, "retention_bytes=-5", "topics", "create", "n", "--retention-bytes", "-5"),
    _cli("create-retention-ms", INVALID, "retention_ms=0", "topics", "create", "n", "--retention-ms", "0"),
    _cli("describe-name-slash", INVALID, "'a/b'", "topics", "describe", "a/b"),
    _cli("describe-missing", NOT_FOUND, "'nope'", "topics", "describe", "nope"),
    _cli("produce-name-slash", INVALID, "'a/b'", "produce", "a/b", "v"),
    _cli("produce-priority-high", USAGE, "256", "produce", "t", "v", "--priority", "256"),
    _cli("produce-priority-negative", USAGE, "-1", "produce", "t", "v", "--priority", "-1"),
    _cli("produce-priority-text", USAGE, "'high'", "produce", "t", "v", "--priority", "high"),
    _cli("configure-retry-max-delay-text", USAGE, "'soon'", "groups", "configure", "g", "--retry-max-delay", "soon"),
    _cli("produce-header-no-equals", USAGE, "'novalue'", "produce", "t", "v", "--header", "novalue"),
    _cli("produce-header-empty-name", USAGE, "'=v'", "produce", "t", "v", "--header", "=v"),
    _cli("produce-json-bad", USAGE, "'{oops'", "produce", "t", "{oops", "--json-values"),
    _cli("produce-too-large", INVALID, "2000", "produce", "small", "x" * 2000),
    _cli("consume-group-slash", INVALID, "'a/b'", "consume", "t", "--group", "a/b", "--timeout", "0"),
    _cli("consume-count-zero", USAGE, "0", "consume", "t", "--group", "g", "--count", "0"),
    _cli("consume-timeout-negative", USAGE, "-1", "consume", "t", "--group", "g", "--timeout", "-1"),
    _cli("consume-lease-zero", USAGE, "0", "consume", "t", "--group", "g", "--lease", "0"),
    _cli("consume-nack-delay-negative", USAGE, "-2", "consume", "t", "--group", "g", "--nack", "--nack-delay", "-2"),
    _cli("consume-timeout-nan", USAGE, "nan", "consume", "t", "--group", "g", "--timeout", "nan"),
    _cli("consume-timeout-inf", USAGE, "inf", "consume", "t", "--group", "g", "--timeout", "inf"),
    _cli("consume-lease-nan", USAGE, "nan", "consume", "t", "--group", "g", "--lease", "nan"),
    _cli("consume-lease-inf", USAGE, "inf", "consume", "t", "--group", "g", "--lease", "inf"),
    _cli("consume-nack-delay-nan", USAGE, "nan", "consume", "t", "--group", "g", "--nack", "--nack-delay", "nan"),
    _cli("consume-nack-delay-inf", USAGE, "inf", "consume", "t", "--group", "g", "--nack", "--nack-delay", "inf"),
    _cli("consume-missing-topic", NOT_FOUND, "'nope'", "consume", "nope", "--group", "g", "--timeout", "0"),
    _cli("peek-count-zero", USAGE, "0", "peek", "t", "--group", "g", "--count", "0"),
    _cli("peek-group-missing", NOT_FOUND, "'never'", "peek", "t", "--group", "never"),
    _cli("replay-offset-negative", USAGE, "-1", "replay", "t", "--from-offset", "-1"),
    _cli("replay-time-bad", USAGE, "'yesterday'", "replay", "t", "--from-time", "yesterday"),
    _cli("replay-partition-missing", INVALID, "3", "replay", "t", "--partition", "3"),
    _cli("replay-partition-negative", INVALID, "-1", "replay", "t", "--partition", "-1"),
    _cli("reset-to-bad", USAGE, "'middle'", "groups", "reset", "g", "--topic", "t", "--to", "middle"),
    _cli("reset-to-negative", USAGE, "'-1'", "groups", "reset", "g", "--topic", "t", "--to", "-1"),
    _cli("reset-group-slash", INVALID, "'a/b'", "groups", "reset", "a/b", "--topic", "t", "--to", "earliest"),
    _cli("describe-group-missing", NOT_FOUND, "'never'", "groups", "describe", "never"),
    _cli("configure-lease-zero", INVALID, "lease_timeout=0", "groups", "configure", "g", "--lease-timeout", "0"),
    _cli("configure-max-deliveries", INVALID, "-1", "groups", "configure", "g", "--max-deliveries", "-1"),
    _cli("configure-starvation", INVALID, "-1", "groups", "configure", "g", "--starvation-limit", "-1"),
    _cli("configure-retry-delay", INVALID, "-1", "groups", "configure", "g", "--retry-delay", "-1"),
    _cli("configure-backoff", INVALID, "0.5", "groups", "configure", "g", "--retry-backoff", "0.5"),
    _cli("configure-max-delay", INVALID, "-1", "groups", "configure", "g", "--retry-max-delay", "-1"),
    _cli("configure-dlq-slash", INVALID, "'a/b'", "groups", "configure", "g", "--dead-letter-topic", "a/b"),
    _cli("configure-group-slash", INVALID, "'a/b'", "groups", "configure", "a/b", "--lease-timeout", "1"),
    _cli("dlq-list-group-missing", NOT_FOUND, "'never'", "dlq", "list", "t", "--group", "never"),
]


def _error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return errors[-1] if errors else ""


@pytest.fixture
def cli_data_dir(tmp_path: Path) -> Path:
    """A data directory with the topics `t` (five messages) and `small` (max 1000 bytes)."""
    data_dir = tmp_path / "data"
    sent = runner.invoke(app, ["--data", str(data_dir), "produce", "t", *STORED_VALUES])
    assert sent.exit_code == 0, sent.output
    created = runner.invoke(app, ["--data", str(data_dir), "topics", "create", "small", "--max-message-bytes", "1000"])
    assert created.exit_code == 0, created.output
    return data_dir


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda case: case.name)
def test_cli_bad_value(cli_data_dir: Path, case: CliCase) -> None:
    result = runner.invoke(app, ["--data", str(cli_data_dir), *case.args])

    assert result.exit_code == case.code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    line = _error_line(result.stderr)
    assert case.shown in line, result.stderr
    replayed = runner.invoke(app, ["--data", str(cli_data_dir), "replay", "t", "--json"])
    assert [json.loads(line)["value"] for line in replayed.stdout.splitlines()] == STORED_VALUES


@pytest.mark.parametrize("delay", ["nan", "inf", "-1"])
def test_cli_bad_nack_delay_delivers_nothing(cli_data_dir: Path, delay: str) -> None:
    result = runner.invoke(app, ["--data", str(cli_data_dir), "consume", "t", "--group", "g", "--nack",
                                 "--nack-delay", delay, "--timeout", "0"])

    assert result.exit_code == ExitCode.USAGE, result.output
    assert result.stdout == ""
    peeked = runner.invoke(app, ["--data", str(cli_data_dir), "peek", "t", "--group", "g", "--json"])
    # The group was never created, so no message was leased or counted as delivered.
    assert peeked.exit_code == ExitCode.NOT_FOUND, peeked.output
