"""Smoke tests of `python -m bench compare`: a tiny run of logq and the sqlite3 peer, and its report parts.

The directory has no __init__.py: with one, pytest would import this file as
`bench.test_compare_smoke` and shadow the repository's `bench` package.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from bench import chart, compare
from bench.__main__ import main as bench_main
from bench.peers.base import (CONSUME_ONE, CONSUME_PRIORITIES, CONSUME_SCENARIOS, PRODUCE_PER_CALL, SCENARIOS,
                              Workload, check_priority_order)
from bench.peers.sqlite_queue import SqlitePeer

SQLITE = "sqlite3 WAL queue"
PEERS = ("logq", SQLITE)
CLASSES = ("interval", "always")
MESSAGES = 300
PER_CALL_MESSAGES = 50
RECEIVE_ONE_MESSAGES = 50
LATENCY_RATES = (200, 500)
LATENCY_SECONDS = 0.2

TINY_RUN = [
    "--messages", str(MESSAGES),
    "--per-call-messages", str(PER_CALL_MESSAGES),
    "--receive-one-messages", str(RECEIVE_ONE_MESSAGES),
    "--batch-size", "100",
    "--runs", "1",
    "--latency-rate", str(LATENCY_RATES[0]),
    "--latency-rate", str(LATENCY_RATES[1]),
    "--latency-seconds", str(LATENCY_SECONDS),
    "--latency-warmup-seconds", "0.05",
    "--no-chart",
    "--peer", SQLITE,
]


def expected_messages(scenario: str) -> int:
    """Return the messages per run that TINY_RUN gives `scenario`."""
    if scenario == PRODUCE_PER_CALL:
        return PER_CALL_MESSAGES
    if scenario == CONSUME_ONE:
        return RECEIVE_ONE_MESSAGES
    return MESSAGES


def test_compare_tiny_run_writes_every_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = compare.main([*TINY_RUN, "--results-dir", str(tmp_path)])

    assert status == 0
    json_files = list(tmp_path.glob("compare-*.json"))
    markdown_files = list(tmp_path.glob("compare-*.md"))
    assert len(json_files) == 1
    assert len(markdown_files) == 1
    assert list(tmp_path.glob("*.png")) == []
    stdout = capsys.readouterr().out
    assert markdown_files[0].read_text(encoding="utf-8") == stdout

    report = json.loads(json_files[0].read_text(encoding="utf-8"))
    rows = {(row["durability"], row["scenario"], row["peer"]): row for row in report["results"]}
    assert len(rows) == len(CLASSES) * len(SCENARIOS) * len(PEERS)
    for durability in CLASSES:
        for scenario in SCENARIOS:
            for peer in PEERS:
                row = rows[(durability, scenario, peer)]
                assert row["supported"], (durability, scenario, peer)
                assert row["messages"] == expected_messages(scenario), (durability, scenario, peer)
                assert row["messages_per_second"]["median"] > 0, (durability, scenario, peer)
                assert row["delivery_errors"] == [], (durability, scenario, peer)
                assert row["check"] == ("ok" if scenario in CONSUME_SCENARIOS else None), (durability, scenario, peer)
                assert row["noise_percent"] is None, (durability, scenario, peer)
                assert row["server_cpu_us_per_message"] is None, (durability, scenario, peer)
                assert (row["logq_to_peer_ratio"] is None) == (peer == "logq"), (durability, scenario, peer)

    latency = {(row["durability"], row["rate"], row["peer"]): row for row in report["latency"]}
    assert len(latency) == len(CLASSES) * len(LATENCY_RATES) * len(PEERS)
    for durability in CLASSES:
        for rate in LATENCY_RATES:
            for peer in PEERS:
                row = latency[(durability, rate, peer)]
                assert row["check"] == "ok", (durability, rate, peer, row["delivery_errors"])
                assert row["messages"] == round(rate * LATENCY_SECONDS), (durability, rate, peer)
                assert row["planned_messages"] == row["messages"], (durability, rate, peer)
                assert row["runs_stopped_at_time_limit"] == 0, (durability, rate, peer)
                percentiles = row["latency_us"]
                assert 0 < percentiles["p50"] <= percentiles["p99"] <= percentiles["p99.9"] <= percentiles["max"]
                assert row["achieved_rate"] > 0, (durability, rate, peer)

    assert report["noise"]["largest_percent"] is None
    assert "## Throughput" in stdout
    assert "## End-to-end latency" in stdout
    assert "chart: not written (--no-chart)" in stdout


class SqliteWithoutPriorities(SqlitePeer):
    """The sqlite3 peer with its priority support hidden, like a peer that has no priorities."""

    name = "sqlite3 without priorities"
    supports_priorities = False


def test_peer_without_priorities_listed_unsupported() -> None:
    workload = Workload(messages=100, per_call_messages=10, receive_one_messages=10, value_bytes=10, batch_size=50,
                        runs=1, sqlite_transaction_rows=100)

    rows = asyncio.run(compare.run_all([SqliteWithoutPriorities()], ["interval"], workload))

    by_scenario = {row["scenario"]: row for row in rows}
    assert list(by_scenario) == list(SCENARIOS)
    assert by_scenario[CONSUME_PRIORITIES]["supported"] is False
    assert by_scenario[CONSUME_PRIORITIES]["check"] == "not supported"
    assert all(row["supported"] for scenario, row in by_scenario.items() if scenario != CONSUME_PRIORITIES)


def test_priority_check_accepts_promised_order() -> None:
    sent_ids = [10, 11, 12, 13, 14]
    priorities = [0, 9, 5, 9, 0]

    assert check_priority_order([11, 13, 12, 10, 14], sent_ids, priorities) == ()


def test_priority_check_finds_fifo_delivery() -> None:
    sent_ids = [10, 11, 12, 13, 14]
    priorities = [0, 9, 5, 9, 0]

    errors = check_priority_order(sent_ids, sent_ids, priorities)

    assert len(errors) == 1
    assert "out of priority order" in errors[0]


def test_priority_check_finds_unknown_id() -> None:
    errors = check_priority_order([99], [10], [0])

    assert any("never returned by send_batch_priorities" in error for error in errors)


def test_chart_skipped_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes every import of matplotlib raise ImportError.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    report = {"results": [], "latency": [], "workload": {"runs": 1}, "machine": {}, "started_utc": ""}

    assert chart.write_chart(report, tmp_path / "chart.png") is False
    assert not (tmp_path / "chart.png").exists()


def test_bench_entry_point_rejects_unknown_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["nope"]) == 2
    assert "unknown subcommand 'nope'" in capsys.readouterr().err
