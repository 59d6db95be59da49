"""Tests of logq.check: each kind of damage is found, check alone changes no byte, and --repair fixes what it claims.

A pristine data directory is built once with the real API and copied for each
test, which then damages the copy for real.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import zlib
from pathlib import Path

import orjson
import pytest

import logq
from logq import CheckReport, DataDirLockedError, NotFoundError
from logq.consumers.priority_index import _Checkpoint
from logq.segments.batch import RecordInput, encode_batch, parse_header

MESSAGES = 120
TOPIC = "orders"
PARTITION = Path("topics") / TOPIC / "0"
JOURNAL = Path("groups") / "billing" / "journal"
SNAPSHOT = Path("groups") / "billing" / "snapshot.json"


async def _build(directory: Path) -> None:
    async with logq.open(directory) as log:
        await log.create_topic(TOPIC, partitions=1, segment_bytes=4096)
        for number in range(MESSAGES):
            await log.send(TOPIC, {"n": number, "pad": "x" * 50}, priority=number % 3)
        async with log.consumer(TOPIC, group="billing") as consumer:
            for message in await consumer.receive(5, timeout=1.0):
                await message.ack()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pristine") / "data"
    asyncio.run(_build(directory))
    return directory


@pytest.fixture
def data(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(pristine, copy)
    return copy


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.log"))


def hashes(root: Path) -> dict[str, str]:
    """Return the SHA-256 of every file, the lock file included, by relative path."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def kinds(report: CheckReport) -> list[tuple[str, str]]:
    return [(finding.path, finding.kind) for finding in report.findings]


def check_changes_nothing(root: Path) -> CheckReport:
    before = hashes(root)
    report = logq.check(root)
    assert hashes(root) == before
    return report


async def _values(root: Path, from_offset: int = 0) -> list[int]:
    async with logq.open(root) as log:
        return [message.value["n"] async for message in log.replay(TOPIC, from_offset=from_offset)]


def test_clean_directory_has_no_findings(data: Path) -> None:
    report = check_changes_nothing(data)

    assert report.findings == []
    assert report.clean
    assert report.partitions == 2
    assert report.segments >= 4
    assert report.groups == 1


@pytest.mark.parametrize("cut", [1, 12, 37, 38, 60, -1])
def test_torn_tail_found_and_truncated(data: Path, cut: int) -> None:
    last = segments(data / PARTITION)[-1]
    content = last.read_bytes()
    batch_size = parse_header(content, 0).size
    # Keep the first batch whole and cut `cut` bytes into the second (or one byte short of the end).
    keep = len(content) - 1 if cut < 0 else batch_size + cut
    last.write_bytes(content[:keep])

    report = check_changes_nothing(data)

    # The priority index still covers the cut offsets, so it is stale too.
    assert kinds(report) == [
        (f"{PARTITION.as_posix()}/{last.name}", "torn-tail"),
        (f"{PARTITION.as_posix()}/priority.index", "priority-index"),
    ]
    finding = report.findings[0]
    assert finding.repairable
    assert finding.position is not None and finding.position < keep

    repaired = logq.check(data, repair=True)

    assert all(finding.repaired for finding in repaired.findings)
    assert repaired.remaining == []
    assert last.stat().st_size == finding.position
    assert logq.check(data).clean
    assert asyncio.run(_values(data)) == list(range(finding.offset))


def test_mid_segment_corruption_left_alone(data: Path) -> None:
    first = segments(data / PARTITION)[0]
    content = bytearray(first.read_bytes())
    second_batch = parse_header(content, 0).size
    content[second_batch + 45] ^= 0x10
    first.write_bytes(bytes(content))

    report = check_changes_nothing(data)

    assert kinds(report) == [(f"{PARTITION.as_posix()}/{first.name}", "corrupt-batch")]
    finding = report.findings[0]
    assert not finding.repairable
    assert finding.position == second_batch
    assert finding.offset == 1
    assert "offsets 1..1 are unreadable" in finding.problem

    repaired = logq.check(data, repair=True)

    assert not repaired.findings[0].repaired
    assert [f.kind for f in repaired.remaining] == ["corrupt-batch"]
    assert first.read_bytes() == bytes(content)
    # Reads start at the nearest offset index entry, so offsets after the damage
    # in the same segment fail. The next segment's offsets still read.
    next_segment = int(segments(data / PARTITION)[1].stem)
    assert asyncio.run(_values(data, from_offset=next_segment)) == list(range(next_segment, MESSAGES))


@pytest.mark.parametrize(
    ("suffix", "damage"),
    [
        (".index", "delete"),
        (".index", "odd-size"),
        (".index", "drop-entry"),
        (".index", "garble"),
        (".timeindex", "delete"),
        (".timeindex", "odd-size"),
        (".timeindex", "garble"),
    ],
)
def test_damaged_index_rebuilt(data: Path, suffix: str, damage: str) -> None:
    path = segments(data / PARTITION)[0].with_suffix(suffix)
    original = path.read_bytes()
    if damage == "delete":
        path.unlink()
    elif damage == "odd-size":
        path.write_bytes(original[:-3])
    elif damage == "drop-entry":
        path.write_bytes(original[:-8])
    else:
        path.write_bytes(original[:4] + bytes(b ^ 0x5A for b in original[4:]))

    report = check_changes_nothing(data)

    kind = "offset-index" if suffix == ".index" else "time-index"
    assert kinds(report) == [(f"{PARTITION.as_posix()}/{path.name}", kind)]
    assert report.findings[0].repairable

    repaired = logq.check(data, repair=True)

    assert repaired.findings[0].repaired
    assert repaired.remaining == []
    assert path.read_bytes() == original


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("priority.index", "garble"),
        ("priority.index", "delete"),
        ("priority.index", "extra-bytes"),
        ("priority.checkpoint", "garble"),
        ("priority.checkpoint", "delete"),
    ],
)
def test_damaged_priority_index_rebuilt(data: Path, name: str, damage: str) -> None:
    path = data / PARTITION / name
    original = path.read_bytes()
    if damage == "delete":
        path.unlink()
    elif damage == "extra-bytes":
        path.write_bytes(original + b"\x00" * 9)
    else:
        path.write_bytes(bytes(b ^ 0xFF for b in original[:5]) + original[5:])

    report = check_changes_nothing(data)

    assert kinds(report) == [(f"{PARTITION.as_posix()}/priority.index", "priority-index")]

    repaired = logq.check(data, repair=True)

    assert repaired.findings[0].repaired
    assert repaired.remaining == []
    assert logq.check(data).clean


def test_torn_journal_tail_truncated(data: Path) -> None:
    journal = segments(data / JOURNAL)[-1]
    journal.write_bytes(journal.read_bytes() + b"\x01\x02\x03")

    report = check_changes_nothing(data)

    assert kinds(report) == [(f"{JOURNAL.as_posix()}/{journal.name}", "torn-tail")]

    repaired = logq.check(data, repair=True)

    assert repaired.remaining == []


def test_corrupt_journal_record_reported(data: Path) -> None:
    journal = segments(data / JOURNAL)[-1]
    content = bytearray(journal.read_bytes())
    content[parse_header(content, 0).size - 2] ^= 0x01
    journal.write_bytes(bytes(content))

    report = check_changes_nothing(data)

    [finding] = report.findings
    assert finding.path == f"{JOURNAL.as_posix()}/{journal.name}"
    assert finding.kind == "corrupt-batch"
    assert not finding.repairable
    assert finding.position == 0
    assert finding.offset == 0


def test_damaged_snapshot_rebuilt_from_journal(data: Path) -> None:
    snapshot = data / SNAPSHOT
    committed = orjson.loads(snapshot.read_bytes())["partitions"][0]["committed"]
    snapshot.write_bytes(b'{"journal_offset": 3, "partitions": [')

    report = check_changes_nothing(data)

    assert kinds(report) == [(SNAPSHOT.as_posix(), "snapshot")]
    assert report.findings[0].repairable

    repaired = logq.check(data, repair=True)

    assert repaired.findings[0].repaired
    assert repaired.remaining == []
    assert orjson.loads(snapshot.read_bytes())["partitions"][0]["committed"] == committed


def test_leftover_temp_files_removed(data: Path) -> None:
    leftovers = [
        data / "topics" / TOPIC / "topic.json.tmp",
        data / PARTITION / "priority.checkpoint.tmp",
        data / "groups" / "billing" / "snapshot.json.tmp",
    ]
    for path in leftovers:
        path.write_bytes(b"partial")
    (data / "staging" / "create-half").mkdir(parents=True)

    report = check_changes_nothing(data)

    assert sorted(kinds(report)) == sorted(
        [(path.relative_to(data).as_posix(), "temp-file") for path in leftovers]
        + [("staging/create-half", "staging")]
    )

    repaired = logq.check(data, repair=True)

    assert all(finding.repaired for finding in repaired.findings)
    assert repaired.remaining == []
    assert not any(path.exists() for path in leftovers)


def test_locked_directory_raises(data: Path) -> None:
    async def check_while_open() -> None:
        async with logq.open(data):
            with pytest.raises(DataDirLockedError):
                logq.check(data)

    asyncio.run(check_while_open())


def test_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        logq.check(tmp_path / "absent")
    assert not (tmp_path / "absent").exists()


def test_journal_record_not_json_reported(data: Path) -> None:
    journal = segments(data / JOURNAL)[-1]
    content = journal.read_bytes()
    position = 0
    while position < len(content):
        header = parse_header(content, position)
        position += header.size
    # A batch with a valid CRC whose value is not JSON: damage that passed the CRC.
    journal.write_bytes(content + encode_batch(header.next_offset, [RecordInput(b"{not json")], timestamp_ms=1))

    report = check_changes_nothing(data)

    assert kinds(report) == [(JOURNAL.as_posix(), "journal-event")]
    assert report.findings[0].offset == header.next_offset
    assert not report.findings[0].repairable


def test_group_offset_past_log_end_reported(data: Path) -> None:
    snapshot = data / SNAPSHOT
    state = orjson.loads(snapshot.read_bytes())
    state["partitions"][0]["committed"] = 10_000
    snapshot.write_bytes(orjson.dumps(state))

    report = check_changes_nothing(data)

    assert kinds(report) == [("groups/billing", "group-offset")]
    assert report.findings[0].offset == 10_000
    assert f"past the log end offset {MESSAGES}" in report.findings[0].problem


def test_missing_middle_segment_reported(data: Path) -> None:
    middle = segments(data / PARTITION)[1]
    following = segments(data / PARTITION)[2]
    for suffix in (".log", ".index", ".timeindex"):
        middle.with_suffix(suffix).unlink()

    report = check_changes_nothing(data)

    assert kinds(report) == [(f"{PARTITION.as_posix()}/{following.name}", "offset-gap")]
    assert report.findings[0].offset == int(middle.stem)
    assert not report.findings[0].repairable

    repaired = logq.check(data, repair=True)

    assert [finding.kind for finding in repaired.remaining] == ["offset-gap"]
    assert not middle.exists()


def test_priority_entry_wrong_priority_found(data: Path) -> None:
    index = data / PARTITION / "priority.index"
    checkpoint_path = data / PARTITION / "priority.checkpoint"
    entries = bytearray(index.read_bytes())
    entries[8] = 7
    checkpoint = _Checkpoint.decode(checkpoint_path.read_bytes())
    assert checkpoint is not None
    # A consistent checkpoint, so only the comparison with the log finds the wrong priority.
    checkpoint_path.write_bytes(_Checkpoint(checkpoint.next_offset, len(entries), zlib.crc32(entries)).encode())
    index.write_bytes(bytes(entries))

    report = check_changes_nothing(data)

    assert kinds(report) == [(f"{PARTITION.as_posix()}/priority.index", "priority-index")]
    assert report.findings[0].position == 0
    assert "priority 7, the log gives 1" in report.findings[0].problem

    repaired = logq.check(data, repair=True)

    assert repaired.remaining == []
    assert index.read_bytes()[8] == 1


async def _two_sessions(directory: Path) -> None:
    for session in range(2):
        async with logq.open(directory) as log:
            if session == 0:
                await log.create_topic("packed", partitions=2, segment_bytes=4096, compression="zstd")
            for number in range(60):
                await log.send("packed", {"n": number}, key=str(number), priority=number % 4)
            async with log.consumer("packed", group="workers") as consumer:
                received = await consumer.receive(10, timeout=1.0)
                for message in received[:6]:
                    await message.ack()
                for message in received[6:8]:
                    await message.nack()


def test_reopened_compressed_topic_clean(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    asyncio.run(_two_sessions(directory))

    report = check_changes_nothing(directory)

    assert report.findings == []
    assert report.partitions == 3


def test_snapshot_ahead_of_journal_reported_and_moved(data: Path) -> None:
    snapshot = data / SNAPSHOT
    state = orjson.loads(snapshot.read_bytes())
    # As a stop leaves it when two events the snapshot contains were still queued for the journal.
    state["unwritten_events"] = 2
    snapshot.write_bytes(orjson.dumps(state))

    report = check_changes_nothing(data)

    assert kinds(report) == [(SNAPSHOT.as_posix(), "snapshot-ahead")]
    assert "2 events are only in the snapshot" in report.findings[0].problem
    assert report.findings[0].repairable

    repaired = logq.check(data, repair=True)

    assert repaired.findings[0].repaired
    assert repaired.remaining == []
    moved = orjson.loads(snapshot.read_bytes())
    assert (moved["journal_offset"], moved["unwritten_events"]) == (state["journal_offset"], 0)
    assert moved["partitions"] == state["partitions"]
    assert logq.check(data).findings == []


@pytest.mark.parametrize("value", [-1, "1", True])
def test_snapshot_bad_unwritten_count_reported(data: Path, value: object) -> None:
    snapshot = data / SNAPSHOT
    state = orjson.loads(snapshot.read_bytes())
    state["unwritten_events"] = value
    snapshot.write_bytes(orjson.dumps(state))

    report = check_changes_nothing(data)

    assert kinds(report) == [(SNAPSHOT.as_posix(), "snapshot")]
    assert "unwritten_events" in report.findings[0].problem


def test_invalid_group_config_reported(data: Path) -> None:
    config = data / "groups" / "billing" / "group.json"
    config.write_bytes(b'{"lease_timeout": -5}')

    report = check_changes_nothing(data)

    assert kinds(report) == [("groups/billing/group.json", "group-config")]
    assert "lease_timeout=-5" in report.findings[0].problem
    assert not report.findings[0].repairable


@pytest.mark.parametrize("cut", ["journal cut short", "journal deleted"])
def test_repair_keeps_snapshot_past_a_damaged_journal(data: Path, cut: str) -> None:
    snapshot = data / SNAPSHOT
    state = orjson.loads(snapshot.read_bytes())
    journal_segment = segments(data / JOURNAL)[-1]
    if cut == "journal deleted":
        shutil.rmtree(data / JOURNAL)
    else:
        first = parse_header(journal_segment.read_bytes(), 0)
        journal_segment.write_bytes(journal_segment.read_bytes()[:first.size])

    report = check_changes_nothing(data)
    repaired = logq.check(data, repair=True)

    assert (SNAPSHOT.as_posix(), "snapshot-ahead") in kinds(report)
    assert repaired.remaining == []
    # The group keeps its position: rebuilding from the short journal would start it over.
    moved = orjson.loads(snapshot.read_bytes())
    assert moved["partitions"] == state["partitions"]
    assert moved["partitions"][0]["done"], "the pristine group acked five messages"
