"""The main job on real data: ingest six loghub sample logs, restart, and consume them with two groups.

Every step runs the real command line (`python -m logq`) in a new process, so
the consumers read what the ingest process left on disk. The logs are the
loghub 2k samples (Android, Apache, HDFS, Linux, OpenSSH, Spark), which live
outside the repository and are never copied into it. They have CRLF line
ends, trailing spaces and, in four files, an unterminated last line.
"""

import base64
import json
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

LOGHUB_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "loghub"
LOG_FILES = sorted(LOGHUB_DIR.glob("*.log"))
EXPECTED_LINES = 12_000
PROCESS_TIMEOUT_SECONDS = 120

pytestmark = pytest.mark.skipif(not LOG_FILES, reason=f"the loghub sample logs are missing from {LOGHUB_DIR}")

# The level field of each log format. Linux and OpenSSH are syslog files
# without a level, so their lines count by the program that wrote them.
CATEGORY_PATTERNS = {
    "Android_2k.log": re.compile(rb"\d\d-\d\d \d\d:\d\d:\d\d\.\d+ +\d+ +\d+ ([VDIWEF]) "),
    "Apache_2k.log": re.compile(rb"\[[^\]]+\] \[(\w+)\] "),
    "HDFS_2k.log": re.compile(rb"\d{6} \d{6} \d+ ([A-Z]+) "),
    "Spark_2k.log": re.compile(rb"\d\d/\d\d/\d\d \d\d:\d\d:\d\d ([A-Z]+) "),
    "Linux_2k.log": re.compile(rb"\w{3} +\d+ \d\d:\d\d:\d\d \S+ ([\w.-]+)"),
    "OpenSSH_2k.log": re.compile(rb"\w{3} +\d+ \d\d:\d\d:\d\d \S+ ([\w.-]+)\["),
}
LEVEL_FILES = ["Android_2k.log", "Apache_2k.log", "HDFS_2k.log", "Spark_2k.log"]


def category_of(file_name: str, line: bytes) -> str:
    """Return the level (or syslog program) of one log line, or "unparsed"."""
    match = CATEGORY_PATTERNS[file_name].match(line)
    return match.group(1).decode("ascii") if match else "unparsed"


def count_categories(lines_by_file: dict[str, list[bytes]]) -> Counter:
    return Counter((name, category_of(name, line)) for name, lines in lines_by_file.items() for line in lines)


def run_logq(data_dir: Path, *args: str) -> str:
    """Run `python -m logq --data DATA_DIR ARGS...` in a new process and return its stdout."""
    completed = subprocess.run(
        [sys.executable, "-m", "logq", "--data", str(data_dir), *args],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=PROCESS_TIMEOUT_SECONDS,
    )
    assert completed.returncode == 0, completed.stderr.decode("utf-8", "replace")
    return completed.stdout.decode("utf-8")


def value_bytes(message: dict) -> bytes:
    if message["value_format"] == "binary":
        return base64.b64decode(message["value_base64"])
    return message["value"].encode("utf-8")


@dataclass
class Consumed:
    """The messages one `consume --json` or `replay --json` process printed, in output order."""

    messages: list[dict]

    def values_by_file(self) -> dict[str, list[bytes]]:
        by_file: dict[str, list[bytes]] = {}
        for message in self.messages:
            by_file.setdefault(message["key"], []).append(value_bytes(message))
        return by_file


@dataclass
class MainJob:
    """Everything the job printed, and the files it read."""

    files: dict[str, bytes]
    ingest_summary: str
    raw_groups: dict[str, Consumed]
    stripped: Consumed
    replayed: Consumed
    finished_group_output: str

    def file_lines(self, *, keep_newlines: bool) -> dict[str, list[bytes]]:
        return {name: data.splitlines(keepends=keep_newlines) for name, data in self.files.items()}


def consume_json(data_dir: Path, *args: str) -> Consumed:
    return Consumed([json.loads(line) for line in run_logq(data_dir, *args).splitlines()])


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> MainJob:
    data_dir = tmp_path_factory.mktemp("main-job") / "data"
    paths = [str(path) for path in LOG_FILES]

    # Ingest: one process per topic. "raw" keeps line terminators for the byte-exact check.
    run_logq(data_dir, "topics", "create", "raw", "--partitions", "3")
    run_logq(data_dir, "topics", "create", "lines", "--partitions", "3")
    summary = run_logq(data_dir, "ingest", *paths, "--topic", "raw", "--keep-newlines", "--batch-size", "500")
    run_logq(data_dir, "ingest", *paths, "--topic", "lines")

    # Restart: every read below is a new process on the same data directory.
    raw_groups = {group: consume_json(data_dir, "consume", "raw", "--group", group, "--json", "--timeout", "2")
                  for group in ("audit", "metrics")}
    stripped = consume_json(data_dir, "consume", "lines", "--group", "audit", "--json", "--timeout", "2")
    replayed = consume_json(data_dir, "replay", "raw", "--from-offset", "0", "--json")
    finished = run_logq(data_dir, "consume", "raw", "--group", "audit", "--json", "--timeout", "2")

    return MainJob(
        files={path.name: path.read_bytes() for path in LOG_FILES},
        ingest_summary=summary,
        raw_groups=raw_groups,
        stripped=stripped,
        replayed=replayed,
        finished_group_output=finished,
    )


def test_data_set_shape(job: MainJob) -> None:
    lines = job.file_lines(keep_newlines=True)

    assert sum(len(file_lines) for file_lines in lines.values()) == EXPECTED_LINES
    assert all(b"\r\n" in data for data in job.files.values())
    assert any(not data.endswith(b"\n") for data in job.files.values())


def test_ingest_summary_counts(job: MainJob) -> None:
    lines = job.file_lines(keep_newlines=True)

    for path in LOG_FILES:
        expected = f"{path}: {len(lines[path.name])} lines, {len(job.files[path.name])} bytes"
        assert expected in job.ingest_summary.splitlines()
    assert f"ingested {EXPECTED_LINES} lines" in job.ingest_summary


@pytest.mark.parametrize("group", ["audit", "metrics"])
def test_group_gets_every_line_once(job: MainJob, group: str) -> None:
    messages = job.raw_groups[group].messages
    positions = [(message["partition"], message["offset"]) for message in messages]

    assert len(messages) == EXPECTED_LINES
    assert len(set(positions)) == EXPECTED_LINES
    assert {message["group"] for message in messages} == {group}


@pytest.mark.parametrize("group", ["audit", "metrics"])
def test_group_keeps_file_order(job: MainJob, group: str) -> None:
    received = job.raw_groups[group].values_by_file()
    expected = job.file_lines(keep_newlines=True)

    assert sorted(received) == sorted(expected)
    for name in expected:
        assert received[name] == expected[name], f"{name}: values differ from the file's lines in order"


@pytest.mark.parametrize("group", ["audit", "metrics"])
def test_group_rebuilds_files_exactly(job: MainJob, group: str) -> None:
    received = job.raw_groups[group].values_by_file()

    for name, data in job.files.items():
        assert b"".join(received[name]) == data, f"{name}: concatenated values differ from the file"


def test_file_stays_in_one_partition(job: MainJob) -> None:
    partitions: dict[str, set[int]] = {}
    for message in job.raw_groups["audit"].messages:
        partitions.setdefault(message["key"], set()).add(message["partition"])

    for name, used in partitions.items():
        assert len(used) == 1, f"{name} is spread over partitions {sorted(used)}"


def test_stripped_values_are_lines(job: MainJob) -> None:
    received = job.stripped.values_by_file()
    expected = job.file_lines(keep_newlines=False)

    for name in expected:
        assert received[name] == expected[name], f"{name}: stripped values differ from the file's lines"


def test_level_counts_match_files(job: MainJob) -> None:
    from_files = count_categories(job.file_lines(keep_newlines=True))

    for name in LEVEL_FILES:
        assert from_files[(name, "unparsed")] == 0, f"{name} has lines without a level"
    assert from_files[("HDFS_2k.log", "WARN")] > 0
    assert from_files[("Apache_2k.log", "error")] > 0
    assert from_files[("Android_2k.log", "E")] > 0
    for group, consumed in job.raw_groups.items():
        assert count_categories(consumed.values_by_file()) == from_files, f"group {group}"
    assert count_categories(job.stripped.values_by_file()) == from_files


def test_replay_after_commit_counts(job: MainJob) -> None:
    from_files = count_categories(job.file_lines(keep_newlines=True))

    assert len(job.replayed.messages) == EXPECTED_LINES
    assert count_categories(job.replayed.values_by_file()) == from_files
    assert all("group" not in message for message in job.replayed.messages)


def test_finished_group_gets_nothing(job: MainJob) -> None:
    assert job.finished_group_output == ""
