"""Tests of the work-queue side of the `logq` command line: consume's ack modes, peek, groups configure and dlq.

The tests run the app in-process with Typer's CliRunner on a data directory in
tmp_path. Each command opens and closes the data directory, so leases never
outlive a command.
"""

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from logq.cli import ExitCode, app

LOGQ = [sys.executable, "-m", "logq"]
PROCESS_TIMEOUT_SECONDS = 30

runner = CliRunner()


def invoke(data_dir: Path, *args: str, input: str | None = None):
    """Run `logq --data DATA_DIR ARGS...` in-process and return the CliRunner result."""
    return runner.invoke(app, ["--data", str(data_dir), *args], input=input)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def dead_letter(data_dir: Path, *values: str, group: str = "g") -> None:
    """Send `values` to the topic `jobs` and let `group` dead-letter each one on its first nack."""
    invoke(data_dir, "produce", "jobs", *values)
    configured = invoke(data_dir, "groups", "configure", group, "--max-deliveries", "1")
    nacked = invoke(data_dir, "consume", "jobs", "--group", group, "--nack", "--timeout", "0")
    assert configured.exit_code == 0, configured.output
    assert nacked.exit_code == 0, nacked.output


def dlq_rows(data_dir: Path, group: str = "g") -> list[dict]:
    result = invoke(data_dir, "dlq", "list", "jobs", "--group", group, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# -- consume ----------------------------------------------------------------------------


def test_consume_no_ack_redelivers(data_dir: Path) -> None:
    invoke(data_dir, "produce", "jobs", "a", "b")

    first = invoke(data_dir, "consume", "jobs", "--group", "g", "--no-ack", "--timeout", "0")
    again = invoke(data_dir, "consume", "jobs", "--group", "g", "--no-ack", "--timeout", "0")
    as_json = invoke(data_dir, "consume", "jobs", "--group", "g", "--json", "--timeout", "0")
    after = invoke(data_dir, "consume", "jobs", "--group", "g", "--timeout", "0")

    assert first.exit_code == 0, first.output
    assert first.stdout.splitlines() == ["0:0 null a", "0:1 null b"]
    assert again.stdout.splitlines() == ["0:0 null a [delivery 2]", "0:1 null b [delivery 2]"]
    assert [m["delivery_count"] for m in json_lines(as_json.stdout)] == [3, 3]
    assert after.stdout == ""


def test_consume_nack_until_dead_letter(data_dir: Path) -> None:
    invoke(data_dir, "produce", "jobs", "a")
    invoke(data_dir, "groups", "configure", "g", "--max-deliveries", "2")

    result = invoke(data_dir, "consume", "jobs", "--group", "g", "--nack", "--timeout", "0")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["0:0 null a", "0:0 null a [delivery 2]"]
    assert [row["source_offset"] for row in dlq_rows(data_dir)] == [0]


def test_consume_nack_delay(data_dir: Path) -> None:
    invoke(data_dir, "produce", "jobs", "a")

    result = invoke(data_dir, "consume", "jobs", "--group", "g", "--nack", "--nack-delay", "60", "--timeout", "0")
    later = invoke(data_dir, "consume", "jobs", "--group", "g", "--timeout", "0")
    described = invoke(data_dir, "groups", "describe", "g", "--json")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["0:0 null a"]
    assert later.stdout == ""
    assert json.loads(described.stdout)["partitions"][0]["waiting"] == 1


def test_consume_lease_expires(data_dir: Path) -> None:
    invoke(data_dir, "produce", "jobs", "a")

    # Without --lease the second receive would wait out the group's 30 s lease and time out.
    result = invoke(
        data_dir, "consume", "jobs", "--group", "g", "--no-ack", "--lease", "0.05", "--count", "2", "--timeout", "10"
    )

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["0:0 null a", "0:0 null a [delivery 2]"]


@pytest.mark.parametrize("lease", ["0", "-1", "soon"])
def test_consume_bad_lease(data_dir: Path, lease: str) -> None:
    result = invoke(data_dir, "consume", "jobs", "--group", "g", "--lease", lease)

    assert result.exit_code == ExitCode.USAGE, result.output
    assert "'--lease'" in result.stderr


@pytest.mark.parametrize(
    "args, option",
    [(["--no-ack", "--nack"], "'--nack'"), (["--nack-delay", "1"], "'--nack-delay'"),
     (["--nack", "--nack-delay", "-1"], "'--nack-delay'")],
    ids=["no-ack with nack", "delay without nack", "negative delay"],
)
def test_consume_bad_ack_options(data_dir: Path, args: list[str], option: str) -> None:
    result = invoke(data_dir, "consume", "jobs", "--group", "g", *args)

    assert result.exit_code == ExitCode.USAGE, result.output
    assert option in result.stderr


# -- peek -------------------------------------------------------------------------------


def test_peek_changes_nothing(data_dir: Path) -> None:
    invoke(data_dir, "produce", "jobs", "a", "b")
    invoke(data_dir, "produce", "jobs", "urgent", "--priority", "5")
    invoke(data_dir, "groups", "configure", "g", "--max-deliveries", "3")

    first = invoke(data_dir, "peek", "jobs", "--group", "g", "--count", "2")
    second = invoke(data_dir, "peek", "jobs", "--group", "g", "--count", "2")
    consumed = invoke(data_dir, "consume", "jobs", "--group", "g", "--json", "--timeout", "0")

    assert first.exit_code == 0, first.output
    assert first.stdout.splitlines() == ["0:2 null urgent", "0:0 null a"]
    assert second.stdout == first.stdout
    assert [m["value"] for m in json_lines(consumed.stdout)] == ["urgent", "a", "b"]
    assert [m["delivery_count"] for m in json_lines(consumed.stdout)] == [1, 1, 1]


def test_peek_json_delivery_count(data_dir: Path) -> None:
    invoke(data_dir, "produce", "jobs", "a")
    invoke(data_dir, "consume", "jobs", "--group", "g", "--no-ack", "--timeout", "0")

    result = invoke(data_dir, "peek", "jobs", "--group", "g", "--json")

    assert result.exit_code == 0, result.output
    [message] = json_lines(result.stdout)
    assert message["value"] == "a"
    assert message["group"] == "g"
    assert message["delivery_count"] == 2


def test_peek_nothing_ready(data_dir: Path) -> None:
    invoke(data_dir, "produce", "jobs", "a")
    invoke(data_dir, "consume", "jobs", "--group", "g", "--timeout", "0")

    result = invoke(data_dir, "peek", "jobs", "--group", "g")

    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "no message of topic 'jobs' is ready for group 'g'" in result.stderr


def test_peek_unknown_group(data_dir: Path) -> None:
    invoke(data_dir, "produce", "jobs", "a")

    result = invoke(data_dir, "peek", "jobs", "--group", "nope")

    assert result.exit_code == ExitCode.NOT_FOUND, result.output
    assert "consumer group 'nope' does not exist" in result.stderr
    assert json.loads(invoke(data_dir, "groups", "list", "--json").stdout) == []


def test_peek_unknown_topic(data_dir: Path) -> None:
    invoke(data_dir, "groups", "configure", "g", "--max-deliveries", "3")

    result = invoke(data_dir, "peek", "nope", "--group", "g")

    assert result.exit_code == ExitCode.NOT_FOUND, result.output
    assert "topic 'nope' does not exist" in result.stderr


def test_peek_bad_count(data_dir: Path) -> None:
    result = invoke(data_dir, "peek", "jobs", "--group", "g", "--count", "0")

    assert result.exit_code == ExitCode.USAGE, result.output
    assert "'--count'" in result.stderr


# -- groups configure and describe ----------------------------------------------------------------


def test_groups_configure_every_setting(data_dir: Path) -> None:
    result = invoke(
        data_dir, "groups", "configure", "g", "--lease-timeout", "10", "--max-deliveries", "3",
        "--dead-letter-topic", "failed", "--retry-delay", "1", "--retry-backoff", "3", "--retry-max-delay", "60",
        "--key-ordering", "--starvation-limit", "4", "--json",
    )

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "group": "g",
        "config": {
            "lease_timeout": 10.0, "max_deliveries": 3, "dead_letter_topic": "failed", "retry_delay": 1.0,
            "retry_backoff": 3.0, "retry_max_delay": 60.0, "key_ordering": True, "starvation_limit": 4,
        },
    }


def test_groups_configure_keeps_others(data_dir: Path) -> None:
    invoke(data_dir, "groups", "configure", "g", "--max-deliveries", "3", "--key-ordering")

    result = invoke(data_dir, "groups", "configure", "g", "--lease-timeout", "2.5")

    assert result.exit_code == 0, result.output
    lines = [line.split(maxsplit=1) for line in result.stdout.splitlines()]
    assert ["group", "g"] in lines
    assert ["lease_timeout", "2.5 s"] in lines
    assert ["max_deliveries", "3"] in lines
    assert ["key_ordering", "True"] in lines
    assert ["dead_letter_topic", "<topic>.g.dlq"] in lines
    assert ["starvation_limit", "off"] in lines


def test_groups_configure_restores_defaults(data_dir: Path) -> None:
    invoke(data_dir, "groups", "configure", "g", "--dead-letter-topic", "failed", "--starvation-limit", "4")

    result = invoke(
        data_dir, "groups", "configure", "g", "--dead-letter-topic", "", "--starvation-limit", "0", "--no-key-ordering",
        "--json",
    )

    assert result.exit_code == 0, result.output
    config = json.loads(result.stdout)["config"]
    assert config["dead_letter_topic"] is None
    assert config["starvation_limit"] is None
    assert config["key_ordering"] is False


def test_groups_configure_without_settings(data_dir: Path) -> None:
    result = invoke(data_dir, "groups", "configure", "g")

    assert result.exit_code == ExitCode.USAGE, result.output
    assert "give at least one setting" in result.stderr
    assert json.loads(invoke(data_dir, "groups", "list", "--json").stdout) == []


@pytest.mark.parametrize(
    "option, value, setting",
    [("--lease-timeout", "0", "lease_timeout"), ("--retry-backoff", "0.5", "retry_backoff"),
     ("--max-deliveries", "-1", "max_deliveries"), ("--dead-letter-topic", "../x", "dead-letter topic")],
)
def test_groups_configure_invalid_value(data_dir: Path, option: str, value: str, setting: str) -> None:
    result = invoke(data_dir, "groups", "configure", "g", option, value)

    assert result.exit_code == ExitCode.INVALID, result.output
    assert setting in result.stderr


def test_groups_configure_negative_starvation_limit(data_dir: Path) -> None:
    result = invoke(data_dir, "groups", "configure", "g", "--starvation-limit", "-1")

    # A range error of a group setting exits with INVALID, as --max-deliveries -1 does.
    assert result.exit_code == ExitCode.INVALID, result.output
    assert "--starvation-limit -1" in result.stderr


def test_groups_describe_delivery_counts(data_dir: Path) -> None:
    dead_letter(data_dir, "a")
    invoke(data_dir, "produce", "jobs", "b", "c")
    invoke(data_dir, "groups", "configure", "g", "--max-deliveries", "3")
    invoke(data_dir, "consume", "jobs", "--group", "g", "--nack", "--nack-delay", "60", "--count", "1")

    text = invoke(data_dir, "groups", "describe", "g")
    described = invoke(data_dir, "groups", "describe", "g", "--json")

    assert text.exit_code == 0, text.output
    settings, table = text.stdout.split("\n\n")
    assert settings.splitlines()[2].split() == ["max_deliveries", "3"]
    assert table.splitlines()[1].split() == ["jobs", "0", "1", "3", "2", "0", "1", "0", "1"]
    [row] = json.loads(described.stdout)["partitions"]
    assert row["committed_offset"] == 1
    assert row["waiting"] == 1
    assert row["held"] == 0
    assert row["dead_lettered"] == 1


def test_groups_describe_before_reading(data_dir: Path) -> None:
    invoke(data_dir, "groups", "configure", "g", "--max-deliveries", "3")

    result = invoke(data_dir, "groups", "describe", "g")

    assert result.exit_code == 0, result.output
    assert result.stdout.endswith("\n\nthe group has not read any topic yet\n")


# -- dlq --------------------------------------------------------------------------------


def test_dlq_list_table(data_dir: Path) -> None:
    dead_letter(data_dir, "a", "b")

    result = invoke(data_dir, "dlq", "list", "jobs", "--group", "g")

    assert result.exit_code == 0, result.output
    header, first, second = result.stdout.splitlines()
    assert header.split() == ["DLQ", "OFFSET", "SOURCE", "DELIVERIES", "REASON", "LAST", "FAILURE", "REDRIVEN"]
    assert first.split()[:3] == ["0", "0@0", "1"]
    assert second.split()[:3] == ["1", "0@1", "1"]
    assert "max deliveries (1) reached; last failure: nacked" in first
    assert first.split()[-1] == "no"


def test_dlq_list_json(data_dir: Path) -> None:
    dead_letter(data_dir, "a")

    result = invoke(data_dir, "dlq", "list", "jobs", "--group", "g", "--json")

    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert row["dlq_topic"] == "jobs.g.dlq"
    assert row["dlq_offset"] == 0
    assert (row["source_topic"], row["source_partition"], row["source_offset"]) == ("jobs", 0, 0)
    assert row["group"] == "g"
    assert row["delivery_count"] == 1
    assert row["reason"] == "max deliveries (1) reached; last failure: nacked"
    assert row["first_failure"].endswith("Z")
    assert row["last_failure"].endswith("Z")
    assert row["redriven"] is False


def test_dlq_list_empty(data_dir: Path) -> None:
    invoke(data_dir, "produce", "jobs", "a")
    invoke(data_dir, "consume", "jobs", "--group", "g", "--timeout", "0")

    text = invoke(data_dir, "dlq", "list", "jobs", "--group", "g")
    as_json = invoke(data_dir, "dlq", "list", "jobs", "--group", "g", "--json")

    assert text.exit_code == 0, text.output
    assert text.stdout == ""
    assert "group 'g' has no dead letters for topic 'jobs'" in text.stderr
    assert json.loads(as_json.stdout) == []


def test_dlq_show_text(data_dir: Path) -> None:
    invoke(data_dir, "produce", "jobs", "a", "-H", "trace=42", "--key", "k")
    invoke(data_dir, "groups", "configure", "g", "--max-deliveries", "1")
    invoke(data_dir, "consume", "jobs", "--group", "g", "--nack", "--timeout", "0")

    result = invoke(data_dir, "dlq", "show", "jobs", "--group", "g", "0")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["dlq", "topic", "jobs.g.dlq"]
    assert "source          jobs/0@0" in lines
    assert "key             k" in lines
    assert "  trace: 42" in lines
    assert "  logq.dlq.group: g" in lines
    assert "  logq.dlq.reason: max deliveries (1) reached; last failure: nacked" in lines
    assert lines[-2:] == ["value:", "a"]


def test_dlq_show_json(data_dir: Path) -> None:
    dead_letter(data_dir, "a")

    result = invoke(data_dir, "dlq", "show", "jobs", "--group", "g", "0", "--json")

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["source_offset"] == 0
    assert document["message"]["value"] == "a"
    assert document["message"]["topic"] == "jobs.g.dlq"
    assert document["message"]["headers"]["logq.dlq.offset"] == "0"


def test_dlq_show_unknown_offset(data_dir: Path) -> None:
    dead_letter(data_dir, "a")

    result = invoke(data_dir, "dlq", "show", "jobs", "--group", "g", "7")

    assert result.exit_code == ExitCode.NOT_FOUND, result.output
    assert "offset 7 is not a dead letter of group 'g' for topic 'jobs'" in result.stderr


@pytest.mark.parametrize("offset", ["-1", "first"])
def test_dlq_show_bad_offset(data_dir: Path, offset: str) -> None:
    result = invoke(data_dir, "dlq", "show", "jobs", "--group", "g", "--", offset)

    assert result.exit_code == ExitCode.USAGE, result.output
    assert "OFFSET" in result.stderr


def test_dlq_redrive_all(data_dir: Path) -> None:
    dead_letter(data_dir, "a", "b")
    invoke(data_dir, "consume", "jobs", "--group", "other", "--timeout", "0")

    result = invoke(data_dir, "dlq", "redrive", "jobs", "--group", "g")
    consumed = invoke(data_dir, "consume", "jobs", "--group", "g", "--json", "--timeout", "0")
    other = invoke(data_dir, "consume", "jobs", "--group", "other", "--timeout", "0")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["redriven dlq offset 0: jobs/0@0", "redriven dlq offset 1: jobs/0@1"]
    assert "redriven 2 of 2 dead letters" in result.stderr
    assert [(m["value"], m["delivery_count"]) for m in json_lines(consumed.stdout)] == [("a", 1), ("b", 1)]
    assert other.stdout == ""
    assert [row["redriven"] for row in dlq_rows(data_dir)] == [True, True]


def test_dlq_redrive_some_skipped(data_dir: Path) -> None:
    dead_letter(data_dir, "a")

    result = invoke(data_dir, "dlq", "redrive", "jobs", "--group", "g", "0", "5", "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "redriven": [0],
        "skipped": [{"dlq_offset": 5, "reason": "not a dead letter of this topic and group"}],
    }


@pytest.mark.parametrize("offsets", [["0"], ["9"]], ids=["already redriven", "not a dead letter"])
def test_dlq_redrive_nothing_redriven(data_dir: Path, offsets: list[str]) -> None:
    dead_letter(data_dir, "a")
    invoke(data_dir, "dlq", "redrive", "jobs", "--group", "g", "0")

    result = invoke(data_dir, "dlq", "redrive", "jobs", "--group", "g", *offsets)

    assert result.exit_code == ExitCode.NOTHING_REDRIVEN, result.output
    assert result.stdout.startswith(f"skipped dlq offset {offsets[0]}: ")
    assert "no dead letter was redriven" in result.stderr


def test_dlq_redrive_nothing_waiting(data_dir: Path) -> None:
    dead_letter(data_dir, "a")
    invoke(data_dir, "dlq", "redrive", "jobs", "--group", "g")

    result = invoke(data_dir, "dlq", "redrive", "jobs", "--group", "g")

    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "no dead letters for topic 'jobs' that wait for a redrive" in result.stderr


def test_dlq_redrive_negative_offset(data_dir: Path) -> None:
    result = invoke(data_dir, "dlq", "redrive", "jobs", "--group", "g", "--", "-3")

    assert result.exit_code == ExitCode.USAGE, result.output
    assert "OFFSET" in result.stderr


@pytest.mark.parametrize(
    "command", [["list"], ["show", "0"], ["redrive"], ["purge", "--yes"]], ids=["list", "show", "redrive", "purge"]
)
def test_dlq_unknown_group(data_dir: Path, command: list[str]) -> None:
    invoke(data_dir, "produce", "jobs", "a")

    result = invoke(data_dir, "dlq", command[0], "jobs", "--group", "nope", *command[1:])

    assert result.exit_code == ExitCode.NOT_FOUND, result.output
    assert "consumer group 'nope' does not exist" in result.stderr


def test_dlq_unknown_topic(data_dir: Path) -> None:
    invoke(data_dir, "groups", "configure", "g", "--max-deliveries", "1")

    result = invoke(data_dir, "dlq", "list", "nope", "--group", "g")

    assert result.exit_code == ExitCode.NOT_FOUND, result.output
    assert "topic 'nope' does not exist" in result.stderr


def test_dlq_purge_with_yes(data_dir: Path) -> None:
    dead_letter(data_dir, "a", "b")

    result = invoke(data_dir, "dlq", "purge", "jobs", "--group", "g", "--yes")
    again = invoke(data_dir, "dlq", "purge", "jobs", "--group", "g", "--yes")

    assert result.exit_code == 0, result.output
    assert result.stdout == "purged 2 dead letters by deleting topic jobs.g.dlq\n"
    assert dlq_rows(data_dir) == []
    assert again.exit_code == 0, again.output
    assert "nothing to purge" in again.stderr


def test_dlq_purge_without_terminal(data_dir: Path) -> None:
    dead_letter(data_dir, "a")

    result = invoke(data_dir, "dlq", "purge", "jobs", "--group", "g", input="y\n")

    assert result.exit_code == ExitCode.USAGE, result.output
    assert "standard input is not a terminal" in result.stderr
    assert "--yes" in result.stderr
    assert len(dlq_rows(data_dir)) == 1


@pytest.mark.parametrize(
    "answer, exit_code, remaining", [("n", ExitCode.ERROR, 1), ("y", ExitCode.OK, 0)], ids=["declined", "confirmed"]
)
def test_dlq_purge_prompt(data_dir: Path, answer: str, exit_code: int, remaining: int) -> None:
    dead_letter(data_dir, "a")
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [*LOGQ, "--data", str(data_dir), "dlq", "purge", "jobs", "--group", "g"],
        stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    os.close(terminal)

    try:
        os.write(controller, f"{answer}\n".encode())
        stdout, stderr = process.communicate(timeout=PROCESS_TIMEOUT_SECONDS)
    finally:
        os.close(controller)

    assert process.returncode == exit_code, stdout + stderr
    assert "Delete dead-letter topic 'jobs.g.dlq' and its 1 messages?" in stdout
    assert len(dlq_rows(data_dir)) == remaining


# -- groups skip ----------------------------------------------------------------------------


def test_groups_skip_passes_poison_messages_in_one_group(data_dir: Path) -> None:
    invoke(data_dir, "produce", "jobs", "a", "poison-1", "poison-2", "d")
    started = invoke(data_dir, "consume", "jobs", "--group", "g", "--no-ack", "--count", "1", "--timeout", "0")
    assert started.exit_code == 0, started.output

    skipped = invoke(data_dir, "groups", "skip", "g", "--topic", "jobs", "--partition", "0",
                     "--from", "1", "--to", "3", "--json")
    consumed = invoke(data_dir, "consume", "jobs", "--group", "g", "--json", "--timeout", "0")
    other = invoke(data_dir, "consume", "jobs", "--group", "other", "--json", "--timeout", "0")

    assert skipped.exit_code == 0, skipped.output
    assert json.loads(skipped.stdout)["skipped"] == 2
    assert [row["offset"] for row in json_lines(consumed.stdout)] == [0, 3]
    assert [row["offset"] for row in json_lines(other.stdout)] == [0, 1, 2, 3]


@pytest.mark.parametrize(("args", "code", "text"), [
    (["--from", "2", "--to", "2"], ExitCode.USAGE, "pass --to 3"),
    (["--from", "0", "--to", "9"], ExitCode.INVALID, "use an end of at most 2"),
    (["--from", "-1", "--to", "1"], ExitCode.USAGE, "pass --from 0 or more"),
])
def test_groups_skip_rejects_bad_ranges(data_dir: Path, args: list[str], code: int, text: str) -> None:
    invoke(data_dir, "produce", "jobs", "a", "b")
    invoke(data_dir, "consume", "jobs", "--group", "g", "--timeout", "0", "--count", "1")

    result = invoke(data_dir, "groups", "skip", "g", "--topic", "jobs", "--partition", "0", *args)

    assert result.exit_code == code, result.output
    assert text in result.stderr
    assert "Traceback" not in result.output
