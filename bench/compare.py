"""Side-by-side throughput and latency of logq and the peers a user would pick instead, in one invocation.

Run from the repository root:

    python -m bench compare                         # both durability classes, every peer, 3 runs
    python -m bench compare --durability interval   # one class only
    python -m bench compare --json                  # machine-readable results on stdout

(`python -m bench.compare` runs the same.) Every peer runs the scenarios of
bench/peers/base.py that it supports and the latency scenario of
bench/latency.py, with the same message counts and value sizes. It runs them
under two durability classes. Under "interval" the data reaches the disk in
the background, at the latest at the next periodic fsync or checkpoint.
Under "always" every send and ack is on disk when it returns. Each run uses a
fresh directory from `tempfile`, removed afterwards. The ratio column divides
logq's median rate by the peer's median rate in the same scenario and class,
so a ratio above 1 means logq was faster.

The module owns the command line, the runs and the result rows. The tables
and result files are written by bench.compare_report, the chart by bench.chart.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import logging
import selectors
import shlex
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import chart, compare_report
from bench.latency import LATENCY, LatencySample, run_latency
from bench.peers import all_peers
from bench.peers.base import (CONSUME_BATCHED, CONSUME_SCENARIOS, DURABILITY_CLASSES, SCENARIOS, Durability, Peer,
                              Workload)
from bench.scenarios import Sample
from bench.throughput import describe_machine, positive_int

logger = logging.getLogger(__name__)

LOGQ = "logq"

DEFAULT_RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True, slots=True)
class Options:
    """The parsed command line of one bench.compare invocation."""

    workload: Workload
    peers: list[Peer]
    classes: list[Durability]
    as_json: bool
    latency: bool
    chart: bool
    results_dir: Path


# -- throughput scenarios --------------------------------------------------------------


async def run_once(peer: Peer, scenario: str, durability: Durability, workload: Workload) -> Sample | None:
    """Run `scenario` once for `peer` in a fresh temporary directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="logq-compare-") as directory:
        return await peer.run(scenario, Path(directory), durability, workload)


def lists_unsupported(peer: Peer) -> bool:
    """Return whether the report lists the scenarios `peer` lacks as "not supported".

    Only queue peers, the ones that consume, get such rows. The plain file
    only writes, so rows for its missing scenarios would add nothing.
    """
    return peer.supports(CONSUME_BATCHED)


async def run_all(peers: list[Peer], classes: list[Durability], workload: Workload) -> list[dict[str, Any]]:
    """Run every scenario of every peer in every class `workload.runs` times; return one row each.

    Prints progress, and every failed delivery check, to stderr as it happens.
    A queue peer gets a "not supported" row for each scenario it lacks; the
    plain file gets no row for them.
    """
    rows: list[dict[str, Any]] = []
    for durability in classes:
        for scenario in SCENARIOS:
            for peer in peers:
                if not peer.supports(scenario):
                    if lists_unsupported(peer):
                        rows.append(unsupported_row(peer, scenario, durability))
                    continue
                samples: list[Sample] = []
                for number in range(1, workload.runs + 1):
                    print(f"{durability} / {scenario} / {peer.name}: run {number} of {workload.runs}",
                          file=sys.stderr, flush=True)
                    sample = await run_once(peer, scenario, durability, workload)
                    if sample is None:
                        break
                    for error in sample.order_errors:
                        print(f"DELIVERY CHECK FAILED: {durability} / {scenario} / {peer.name}, run {number}: {error}",
                              file=sys.stderr, flush=True)
                    samples.append(sample)
                if samples:
                    rows.append(summarize(peer, scenario, durability, workload, samples))
    add_ratios(rows)
    return rows


def spread_percent(values: list[float]) -> float | None:
    """Return (max - min) / median of `values` in percent, or None for fewer than two values."""
    if len(values) < 2:
        return None
    return (max(values) - min(values)) / statistics.median(values) * 100


def summarize(peer: Peer, scenario: str, durability: Durability, workload: Workload,
              samples: list[Sample]) -> dict[str, Any]:
    """Return the result row of one peer, scenario and class: rates, noise, CPU per message and every run."""
    rates = [sample.rate for sample in samples]
    server_cpu = [s.server_cpu_seconds / s.messages * 1e6 for s in samples if s.server_cpu_seconds is not None]
    return {
        "durability": durability,
        "scenario": scenario,
        "peer": peer.name,
        "supported": True,
        "settings": peer.describe(durability, workload),
        "messages": samples[0].messages,
        "messages_per_second": {"median": statistics.median(rates), "min": min(rates), "max": max(rates)},
        "noise_percent": spread_percent(rates),
        "cpu_us_per_message": statistics.median(s.cpu_seconds / s.messages * 1e6 for s in samples),
        "server_cpu_us_per_message": statistics.median(server_cpu) if server_cpu else None,
        "logq_to_peer_ratio": None,
        "check": check_result(scenario, samples),
        "delivery_errors": sorted({error for sample in samples for error in sample.order_errors}),
        "runs": [{"messages": s.messages, "wall_seconds": s.wall_seconds, "cpu_seconds": s.cpu_seconds,
                  "server_cpu_seconds": s.server_cpu_seconds, "delivery_errors": list(s.order_errors)}
                 for s in samples],
    }


def check_result(scenario: str, samples: list[Sample]) -> str | None:
    """Return "ok" or "FAILED" for a scenario that checks delivery, or None for a produce scenario."""
    if any(sample.order_errors for sample in samples):
        return "FAILED"
    if scenario in CONSUME_SCENARIOS:
        return "ok"
    return None


def unsupported_row(peer: Peer, scenario: str, durability: Durability) -> dict[str, Any]:
    """Return the row that lists `scenario` as not supported by `peer`, with no measurements."""
    return {
        "durability": durability,
        "scenario": scenario,
        "peer": peer.name,
        "supported": False,
        "check": "not supported",
        "delivery_errors": [],
    }


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Set each peer row's ratio: logq's median rate over the peer's, in the same scenario and class."""
    logq_rates = {
        (row["durability"], row["scenario"]): row["messages_per_second"]["median"]
        for row in rows
        if row["peer"] == LOGQ and row["supported"]
    }
    for row in rows:
        logq_rate = logq_rates.get((row["durability"], row["scenario"]))
        if row["peer"] != LOGQ and row["supported"] and logq_rate is not None:
            row["logq_to_peer_ratio"] = logq_rate / row["messages_per_second"]["median"]


# -- latency scenario ----------------------------------------------------------------


def new_latency_loop() -> asyncio.AbstractEventLoop:
    """Return an event loop on select(), whose waits have µs resolution, for the latency runs.

    The default loop waits in epoll, which rounds every timeout up to whole
    milliseconds. The producer's pacing and the 100 µs polls of the default
    `receive_wait` would then be late by up to 1 ms, which is more than the
    latency of most peers at these rates.
    """
    reduce_timer_slack()
    return asyncio.SelectorEventLoop(selectors.SelectSelector())


# prctl option of Linux that sets the calling thread's timer slack, in ns.
PR_SET_TIMERSLACK = 29
LATENCY_TIMER_SLACK_NS = 1_000


def reduce_timer_slack() -> None:
    """Set this thread's timer slack to 1 µs on Linux, so timed waits end when they should.

    Linux lets a timed wait of a normal thread end up to 50 µs late by
    default (the timer slack, prctl(2)), which on its own added about 50 µs
    to the producer's lag at the median on the benchmark machine. It applies
    to every peer's latency runs alike. Elsewhere, or when the call fails,
    nothing changes.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_TIMERSLACK, LATENCY_TIMER_SLACK_NS, 0, 0, 0) != 0:
            logger.warning("prctl(PR_SET_TIMERSLACK) failed with errno %d; latency runs keep the default slack",
                           ctypes.get_errno())
    except OSError as exc:
        logger.warning("cannot load libc to set the timer slack (%s); latency runs keep the default slack", exc)


def run_latency_once(peer: Peer, durability: Durability, workload: Workload, rate: int) -> LatencySample:
    """Run the latency scenario once at `rate` in a fresh temporary directory and a new select() event loop."""
    with tempfile.TemporaryDirectory(prefix="logq-compare-") as directory:
        with asyncio.Runner(loop_factory=new_latency_loop) as runner:
            return runner.run(run_latency(peer, Path(directory), durability, workload, rate))


def run_latency_all(peers: list[Peer], classes: list[Durability], workload: Workload) -> list[dict[str, Any]]:
    """Run the latency scenario for every peer, class and rate `workload.runs` times; return one row each.

    Prints progress and every failed delivery check to stderr as it happens.
    """
    rows: list[dict[str, Any]] = []
    for durability in classes:
        for rate in workload.latency_rates:
            for peer in peers:
                if not peer.supports(LATENCY):
                    if lists_unsupported(peer):
                        rows.append({"durability": durability, "rate": rate, "peer": peer.name, "supported": False,
                                     "check": "not supported", "delivery_errors": []})
                    continue
                samples: list[LatencySample] = []
                for number in range(1, workload.runs + 1):
                    print(f"{durability} / {LATENCY} at {rate:,} msg/s / {peer.name}: run {number} of {workload.runs}",
                          file=sys.stderr, flush=True)
                    sample = run_latency_once(peer, durability, workload, rate)
                    for error in sample.errors:
                        print(f"DELIVERY CHECK FAILED: {durability} / {LATENCY} at {rate:,} msg/s / {peer.name}, "
                              f"run {number}: {error}", file=sys.stderr, flush=True)
                    samples.append(sample)
                rows.append(summarize_latency(peer, durability, workload, rate, samples))
    return rows


def median_or_none(values: list[float | None]) -> float | None:
    """Return the median of the values that are not None, or None when all are None."""
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def summarize_latency(peer: Peer, durability: Durability, workload: Workload, rate: int,
                      samples: list[LatencySample]) -> dict[str, Any]:
    """Return the latency row of one peer, class and rate: medians over runs of each percentile, and the max.

    The noise is the spread of p99 over the runs. `messages` is the median
    number of measured messages sent, below `planned_messages` when the
    producer stopped at the time limit.
    """
    p99 = [s.p99_us for s in samples if s.p99_us is not None]
    maxima = [s.max_us for s in samples if s.max_us is not None]
    return {
        "durability": durability,
        "rate": rate,
        "peer": peer.name,
        "supported": True,
        "settings": peer.describe(durability, workload),
        "planned_messages": samples[0].planned_messages,
        "messages": round(statistics.median(s.messages for s in samples)),
        "runs_stopped_at_time_limit": sum(1 for s in samples if s.stopped_at_time_limit),
        "achieved_rate": median_or_none([s.achieved_rate for s in samples]),
        "latency_us": {
            "p50": median_or_none([s.p50_us for s in samples]),
            "p99": median_or_none([s.p99_us for s in samples]),
            "p99.9": median_or_none([s.p999_us for s in samples]),
            "max": max(maxima) if maxima else None,
        },
        "send_lag_us": {
            "p50": median_or_none([s.send_lag_p50_us for s in samples]),
            "p99": median_or_none([s.send_lag_p99_us for s in samples]),
        },
        "noise_percent": spread_percent(p99) if len(p99) == len(samples) else None,
        "check": "FAILED" if any(s.errors for s in samples) else "ok",
        "delivery_errors": sorted({error for sample in samples for error in sample.errors}),
        "runs": [asdict(sample) for sample in samples],
    }


# -- command line ----------------------------------------------------------------------


def positive_float(text: str) -> float:
    """Parse a command-line number > 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"invalid value {text}: use a number > 0")
    return value


def non_negative_float(text: str) -> float:
    """Parse a command-line number >= 0."""
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"invalid value {text}: use a number >= 0")
    return value


def parse_arguments(argv: list[str] | None) -> Options:
    """Parse the command line into Options; exits with status 2 and a message for an invalid option."""
    peers = all_peers()
    peer_names = [peer.name for peer in peers]
    default_names = [peer.name for peer in peers if peer.in_default_run]
    parser = argparse.ArgumentParser(
        prog="python -m bench compare",
        description="Measure logq beside the peers a user would pick instead, with the same workload. "
                    "Prints a Markdown report and writes it, the results as JSON and a PNG chart to "
                    "the results directory.",
    )
    parser.add_argument("--messages", type=positive_int, default=100_000,
                        help="messages per run of the batched scenarios (default: 100000)")
    parser.add_argument("--per-call-messages", type=positive_int, default=10_000,
                        help="messages per run of the one-send-per-call scenario (default: 10000)")
    parser.add_argument("--receive-one-messages", type=positive_int, default=10_000,
                        help="messages per run of the receive(1) + ack scenario (default: 10000)")
    parser.add_argument("--value-bytes", type=positive_int, default=100,
                        help="size of each value in bytes (default: 100)")
    parser.add_argument("--batch-size", type=positive_int, default=1000,
                        help="values per send_batch call and max messages per receive (default: 1000)")
    parser.add_argument("--sqlite-transaction-rows", type=positive_int, default=100,
                        help="max rows per transaction of the SQLite peers (default: 100)")
    parser.add_argument("--seed", type=int, default=1,
                        help="seed of the shuffle that orders the priorities of the priority scenario (default: 1)")
    parser.add_argument("--durability", choices=DURABILITY_CLASSES, action="append",
                        help="durability class to run; repeat for both (default: both)")
    parser.add_argument("--peer", choices=peer_names, action="append",
                        help=f"peer to run besides logq; repeat for several (default: {', '.join(default_names[1:])})")
    parser.add_argument("--runs", type=positive_int, default=3,
                        help="runs of each scenario; the report gives median, min, max and spread (default: 3)")
    parser.add_argument("--latency-rate", type=positive_int, action="append", metavar="MSG_PER_S",
                        help="send rate of the latency scenario in messages per second; repeat for several "
                             "(default: 1000 and 5000)")
    parser.add_argument("--latency-seconds", type=positive_float, default=5.0,
                        help="measured seconds of each latency run, after the warm-up (default: 5)")
    parser.add_argument("--latency-warmup-seconds", type=non_negative_float, default=0.5,
                        help="seconds of sending before the measured part of each latency run; "
                             "their messages are left out of the percentiles (default: 0.5)")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency scenario")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of the Markdown report")
    parser.add_argument("--no-chart", action="store_true", help="do not write the PNG chart")
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR,
                        help="directory for the result files, created if missing (default: bench/results)")
    arguments = parser.parse_args(argv)

    workload = Workload(
        messages=arguments.messages,
        per_call_messages=arguments.per_call_messages,
        receive_one_messages=arguments.receive_one_messages,
        value_bytes=arguments.value_bytes,
        batch_size=arguments.batch_size,
        runs=arguments.runs,
        sqlite_transaction_rows=arguments.sqlite_transaction_rows,
        seed=arguments.seed,
        latency_rates=tuple(arguments.latency_rate or (1000, 5000)),
        latency_seconds=arguments.latency_seconds,
        latency_warmup_seconds=arguments.latency_warmup_seconds,
    )
    chosen = set(arguments.peer or default_names) | {LOGQ}
    return Options(
        workload=workload,
        peers=[peer for peer in peers if peer.name in chosen],
        classes=arguments.durability or list(DURABILITY_CLASSES),
        as_json=arguments.json,
        latency=not arguments.no_latency,
        chart=not arguments.no_chart,
        results_dir=arguments.results_dir,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the comparison, print the report (or JSON with --json) and write the result files.

    Returns 1 if a delivery check failed, else 0. The result files are
    compare-<UTC time>.json, .md and, unless --no-chart or without
    matplotlib, .png in the results directory.
    """
    arguments = sys.argv[1:] if argv is None else list(argv)
    options = parse_arguments(arguments)
    started = datetime.now(UTC)
    rows = asyncio.run(run_all(options.peers, options.classes, options.workload))
    latency_rows = run_latency_all(options.peers, options.classes, options.workload) if options.latency else []
    failed = any(row["check"] == "FAILED" for row in rows + latency_rows)

    report = {
        "command": shlex.join(["python", "-m", "bench", "compare", *arguments]),
        "started_utc": started.isoformat(timespec="seconds"),
        "workload": asdict(options.workload),
        "machine": describe_machine(),
        "versions": {name: version for peer in options.peers for name, version in peer.versions().items()},
        "results": rows,
        "latency": latency_rows,
        "noise": compare_report.describe_noise(rows, latency_rows, options.workload.runs),
    }
    paths = compare_report.result_paths(options.results_dir, started)
    chart_written = False
    chart_note = "not written (--no-chart)"
    if options.chart:
        chart_written = chart.write_chart(report, paths.chart)
        if chart_written:
            chart_note = paths.chart.name
        else:
            chart_note = f"not written, because matplotlib is not installed; {chart.INSTALL_HINT}"
    markdown = compare_report.format_report(report, chart_note)
    compare_report.write_results(paths, report, markdown)

    if options.as_json:
        print(json.dumps(report, indent=2))
    else:
        print(markdown, end="")
    written = [paths.json, paths.markdown] + ([paths.chart] if chart_written else [])
    print("results written to " + ", ".join(str(path) for path in written), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
