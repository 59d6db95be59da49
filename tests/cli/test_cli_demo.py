"""Tests of `logq demo`: a real run as a subprocess, runs in a given data directory, and its checks."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from logq import cli_demo
from logq.cli import ExitCode, app

PROCESS_TIMEOUT_SECONDS = 60
CHECK_ROWS = [
    "messages processed", "orders started by priority", "order events in sequence", "dead-lettered", "redriven",
    "audit count of created", "audit count of paid", "audit count of shipped",
]

runner = CliRunner()


def summary_rows(stdout: str) -> dict[str, list[str]]:
    """Map each summary row's name to its other cells, split on runs of two or more spaces."""
    rows = {}
    for line in stdout.splitlines()[1:-1]:
        name, *cells = re.split(r"\s{2,}", line.strip())
        rows[name] = cells
    return rows


def test_demo_subprocess() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "logq", "demo", "--orders", "100"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=PROCESS_TIMEOUT_SECONDS,
    )

    assert completed.returncode == 0, completed.stdout + completed.stderr
    rows = summary_rows(completed.stdout)
    assert rows["messages produced"] == ["301", "-"]
    for name in CHECK_ROWS:
        assert rows[name][-1] == "ok", f"{name}: {rows[name]}"
    assert rows["messages processed"][0] == "301 of 301"
    assert rows["orders started by priority"][0] == "101 of 101"
    assert rows["audit count of created"][0] == "101 of 101"
    assert rows["audit count of paid"][0] == "100 of 100"
    assert rows["dead-lettered"][0] == "1 after 3 deliveries"
    assert sum(int(rows[f"processed by {name}"][0]) for name in cli_demo.WORKER_NAMES) >= 301
    assert completed.stdout.splitlines()[-1] == "all 8 checks passed"


def test_demo_deletes_temporary_directory() -> None:
    result = runner.invoke(app, ["demo", "--orders", "5"])

    assert result.exit_code == 0, result.output
    [path] = re.findall(r" in (\S+)$", result.stderr.splitlines()[0])
    assert not Path(path).exists()


def test_demo_in_data_directory(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"

    first = runner.invoke(app, ["demo", "--data", str(data_dir), "--orders", "5"])
    listed = runner.invoke(app, ["--data", str(data_dir), "topics", "list"])
    second = runner.invoke(app, ["--data", str(data_dir), "demo", "--orders", "5"])

    assert first.exit_code == 0, first.output
    assert "orders" in listed.stdout
    assert "orders.fulfilment.dlq" in listed.stdout
    assert second.exit_code == ExitCode.EXISTS, second.output
    assert f"topic 'orders' already exists in {data_dir}" in second.stderr


def test_demo_ignores_environment_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"

    result = runner.invoke(app, ["demo", "--orders", "2"], env={"LOGQ_DATA": str(data_dir)})

    assert result.exit_code == 0, result.output
    assert not data_dir.exists()


def test_demo_bad_orders() -> None:
    result = runner.invoke(app, ["demo", "--orders", "0"])

    assert result.exit_code == ExitCode.USAGE, result.output
    assert "'--orders'" in result.stderr


def test_demo_failed_check(monkeypatch: pytest.MonkeyPatch) -> None:
    def parse_without_fix(value: dict, *, accept_decimal_comma: bool) -> float | None:
        return None if "total" not in value else float(value["total"])

    # The fix has no effect, so the redriven message fails again and is never processed.
    monkeypatch.setattr(cli_demo, "parse_total", parse_without_fix)
    monkeypatch.setattr(cli_demo, "STEP_TIMEOUT_SECONDS", 1.0)

    result = runner.invoke(app, ["demo", "--orders", "5"])

    assert result.exit_code == ExitCode.ERROR, result.output
    rows = summary_rows(result.stdout)
    assert rows["messages processed"] == ["15 of 16", "FAILED"]
    assert rows["order events in sequence"] == ["5 of 6", "FAILED"]
    assert rows["redriven"] == ["1", "ok"]
    assert result.stdout.splitlines()[-1] == "2 of 8 checks failed"


@pytest.mark.parametrize(
    "receipts, expected",
    [
        ([(0, 5, 9, "created"), (0, 1, 5, "created"), (0, 0, 0, "created")], (3, 3)),
        ([(0, 0, 0, "created"), (0, 5, 9, "created")], (1, 2)),
        ([(0, 0, 0, "created"), (1, 5, 9, "created")], (2, 2)),
        ([(0, 5, 5, "created"), (0, 6, 5, "paid"), (0, 0, 0, "created"), (0, 5, 5, "created")], (2, 2)),
    ],
    ids=["in order", "inverted", "other partition", "redelivery and other events"],
)
def test_priority_order_count(receipts: list, expected: tuple[int, int]) -> None:
    assert cli_demo.count_started_in_priority_order(receipts) == expected


def test_plan_orders_mix() -> None:
    orders = cli_demo.plan_orders(100)

    tiers = [order.tier for order in orders]
    assert len(orders) == 101
    assert tiers.count("vip") == 2
    assert tiers.count("express") == 10
    assert orders[-1].events == [{"order_id": "order-00101", "event": "created", "total": "12,50"}]
