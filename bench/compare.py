"""Side-by-side throughput of logq and the peers a user would pick instead, in one invocation.

Run from the repository root:

    python -m bench.compare                         # both durability classes, every peer, 3 runs
    python -m bench.compare --durability interval   # one class only
    python -m bench.compare --json                  # machine-readable results on stdout

Every peer runs the same four scenarios (bench/peers/base.py) with the same
message counts and value sizes. It runs them under two durability classes.
Under "interval" the data reaches the disk in the background, at the latest
at the next periodic fsync or checkpoint. Under "always" every send and ack
is on disk when it returns. Each run uses a fresh directory
from `tempfile`, removed afterwards. The ratio column divides logq's median
rate by the peer's median rate in the same scenario and class, so a ratio
above 1 means logq was faster.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path

from bench.peers import all_peers
from bench.peers.base import DURABILITY_CLASSES, SCENARIOS, Durability, Peer, Workload
from bench.scenarios import Sample
from bench.throughput import describe_machine, positive_int

LOGQ = "logq"


async def run_once(peer: Peer, scenario: str, durability: Durability, workload: Workload) -> Sample | None:
    """Run `scenario` once for `peer` in a fresh temporary directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="logq-compare-") as directory:
        return await peer.run(scenario, Path(directory), durability, workload)


async def run_all(peers: list[Peer], classes: list[Durability], workload: Workload) -> list[dict[str, object]]:
    """Run every scenario of every peer in every class `workload.runs` times; return one row each.

    Prints progress, and every failed delivery check, to stderr as it happens.
    Scenarios a peer does not support get no row.
    """
    rows: list[dict[str, object]] = []
    for durability in classes:
        for scenario in SCENARIOS:
            for peer in peers:
                if not peer.supports(scenario):
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


def summarize(peer: Peer, scenario: str, durability: Durability, workload: Workload,
              samples: list[Sample]) -> dict[str, object]:
    """Return the result row of one peer, scenario and class: rates, CPU per message and every run."""
    rates = [sample.rate for sample in samples]
    return {
        "durability": durability,
        "scenario": scenario,
        "peer": peer.name,
        "settings": peer.describe(durability, workload),
        "messages": samples[0].messages,
        "messages_per_second": {"median": statistics.median(rates), "min": min(rates), "max": max(rates)},
        "cpu_us_per_message": statistics.median(s.cpu_seconds / s.messages * 1e6 for s in samples),
        "logq_to_peer_ratio": None,
        "delivery_errors": sorted({error for sample in samples for error in sample.order_errors}),
        "runs": [{"messages": s.messages, "wall_seconds": s.wall_seconds, "cpu_seconds": s.cpu_seconds}
                 for s in samples],
    }


def add_ratios(rows: list[dict[str, object]]) -> None:
    """Set each peer row's ratio: logq's median rate over the peer's, in the same scenario and class."""
    logq_rates = {
        (row["durability"], row["scenario"]): row["messages_per_second"]["median"]  # type: ignore[index]
        for row in rows
        if row["peer"] == LOGQ
    }
    for row in rows:
        logq_rate = logq_rates.get((row["durability"], row["scenario"]))
        if row["peer"] != LOGQ and logq_rate is not None:
            row["logq_to_peer_ratio"] = logq_rate / row["messages_per_second"]["median"]  # type: ignore[index]


def format_table(workload: Workload, rows: list[dict[str, object]]) -> str:
    """Return the results as a Markdown table with the settings of each peer and class below it."""
    lines = [
        f"{workload.value_bytes}-byte values, batch size {workload.batch_size}, "
        f"runs per row: {workload.runs}, msg/s median (min-max)",
        "",
        "| class | scenario | peer | messages | median msg/s | min | max | CPU µs/msg | logq/peer | check |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        rates = row["messages_per_second"]
        ratio = row["logq_to_peer_ratio"]
        check = ""
        if row["delivery_errors"]:
            check = "FAILED"
        elif "receive" in str(row["scenario"]):
            check = "ok"
        lines.append(
            f"| {row['durability']} | {row['scenario']} | {row['peer']} | {row['messages']:,} "
            f"| {rates['median']:,.0f} | {rates['min']:,.0f} | {rates['max']:,.0f} "  # type: ignore[index]
            f"| {row['cpu_us_per_message']:.2f} | {'' if ratio is None else f'{ratio:.3g}'} | {check} |"
        )

    lines.append("")
    lines.append("Settings of each peer and class:")
    described = dict.fromkeys((row["durability"], row["peer"], row["settings"]) for row in rows)
    for durability, peer, settings in described:
        lines.append(f"- {durability}, {peer}: {settings}")
    lines.append("")
    lines.append("logq/peer = logq's median msg/s / the peer's median msg/s in the same scenario and class.")
    lines.append("check = every message of a consume run was delivered exactly once, checked after the timed part.")

    failures = [f"  {row['durability']} / {row['scenario']} / {row['peer']}: {error}"
                for row in rows for error in row["delivery_errors"]]  # type: ignore[attr-defined]
    if failures:
        lines.append("")
        lines.append("DELIVERY CHECK FAILED: messages were lost or delivered more than once:")
        lines.extend(failures)
    return "\n".join(lines)


def parse_arguments(argv: list[str] | None) -> tuple[Workload, list[Peer], list[Durability], bool]:
    """Parse the command line; return the workload, the peers, the durability classes and whether to print JSON."""
    peers = all_peers()
    peer_names = [peer.name for peer in peers]
    default_names = [peer.name for peer in peers if peer.in_default_run]
    parser = argparse.ArgumentParser(
        prog="python -m bench.compare",
        description="Measure logq beside the peers a user would pick instead, with the same workload.",
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
                        help="max rows per transaction of the SQLite peer (default: 100)")
    parser.add_argument("--durability", choices=DURABILITY_CLASSES, action="append",
                        help="durability class to run; repeat for both (default: both)")
    parser.add_argument("--peer", choices=peer_names, action="append",
                        help=f"peer to run besides logq; repeat for several (default: {', '.join(default_names[1:])})")
    parser.add_argument("--runs", type=positive_int, default=3,
                        help="runs of each scenario; the report gives median, min and max (default: 3)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    arguments = parser.parse_args(argv)

    workload = Workload(
        messages=arguments.messages,
        per_call_messages=arguments.per_call_messages,
        receive_one_messages=arguments.receive_one_messages,
        value_bytes=arguments.value_bytes,
        batch_size=arguments.batch_size,
        runs=arguments.runs,
        sqlite_transaction_rows=arguments.sqlite_transaction_rows,
    )
    chosen = set(arguments.peer or default_names) | {LOGQ}
    classes = arguments.durability or list(DURABILITY_CLASSES)
    return workload, [peer for peer in peers if peer.name in chosen], classes, arguments.json


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print a table, or JSON with --json; return 1 if a delivery check failed, else 0."""
    workload, peers, classes, as_json = parse_arguments(argv)
    rows = asyncio.run(run_all(peers, classes, workload))
    status = 1 if any(row["delivery_errors"] for row in rows) else 0
    machine = describe_machine()
    versions = {name: version for peer in peers for name, version in peer.versions().items()}
    if as_json:
        report = {
            "workload": {field: getattr(workload, field) for field in Workload.__dataclass_fields__},
            "machine": machine,
            "versions": versions,
            "results": rows,
        }
        print(json.dumps(report, indent=2))
        return status
    print(
        f"machine: {machine['nproc']} CPUs, {machine['cpu_model']}, Python {machine['python']}, "
        f"temp dir {machine['temp_dir']} on {machine['temp_dir_file_system']}"
    )
    print("versions: " + ", ".join(f"{name} {version}" for name, version in versions.items()))
    print(format_table(workload, rows))
    return status


if __name__ == "__main__":
    sys.exit(main())
