"""The command `logq demo`: an order-fulfilment run that uses logq as a work queue and checks the results.

The demo creates the topic `orders` with 3 partitions and produces the events
of N orders (created, paid, shipped), keyed by order id. Express orders have
priority 5 and VIP orders priority 9. Three competing workers in the group
`fulfilment` process and ack the events with per-key ordering, while the
group `audit` reads every message on its own. One order has a total written
with a decimal comma, which the workers cannot parse: they nack it until it
reaches the dead-letter topic after 3 deliveries. The demo then fixes the
workers, redrives the message, and prints a table of counts and checks.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

import logq
from logq import InvalidArgumentError, Log, Message, TopicExistsError
from logq.cli_common import ExitCode, global_options, run
from logq.cli_format import format_table
from logq.cli_input import check_minimum
from logq.dead_letters import DeadLetter, RedriveReport

TOPIC = "orders"
PARTITIONS = 3
WORK_GROUP = "fulfilment"
AUDIT_GROUP = "audit"
WORKER_NAMES = ("worker-1", "worker-2", "worker-3")
EVENT_TYPES = ("created", "paid", "shipped")
EXPRESS_PRIORITY = 5
VIP_PRIORITY = 9
DEFAULT_ORDERS = 300
# The lease is short next to the 30 s default, but far longer than a worker needs for a batch.
LEASE_SECONDS = 5.0
MAX_DELIVERIES = 3
RECEIVE_BATCH = 10
POLL_SECONDS = 0.05
WORK_SECONDS = 0.001  # simulated work per message
STEP_TIMEOUT_SECONDS = 60.0  # a step that takes longer fails its checks instead of hanging the demo
BAD_TOTAL = "12,50"  # a decimal comma, which the workers reject until the fix


def demo(
    ctx: typer.Context,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Data directory to run in, which must not contain the demo's topics and groups. "
            "[default: a new temporary directory, deleted at the end]",
        ),
    ] = None,
    orders: Annotated[int, typer.Option(help="Number of orders, 1 or more. Each order has 3 events.")] = DEFAULT_ORDERS,
) -> None:
    """Run an order-fulfilment demo of logq's work-queue features and check every result.

    It produces order events with priorities to the topic `orders`, runs three
    competing workers and an independent audit group, sends a message the
    workers cannot parse to the dead-letter topic, fixes the workers and
    redrives it. Progress goes to stderr and a summary table to stdout. The
    exit code is 0 only when every check passed.

    \b
    Example:
        logq demo --orders 300
    """
    check_minimum(orders, 1, "--orders")
    directory = data if data is not None else _global_data_if_given(ctx)
    with _data_directory(directory) as path:
        summary = run(lambda: run_demo(path, orders, progress=lambda text: typer.echo(text, err=True)))
    typer.echo(format_table(["check", "value", "result"], [[row.name, row.value, row.result] for row in summary.rows]))
    failed = summary.failed
    if failed:
        typer.echo(f"{failed} of {summary.checks} checks failed")
        raise typer.Exit(ExitCode.ERROR)
    typer.echo(f"all {summary.checks} checks passed")


def _global_data_if_given(ctx: typer.Context) -> Path | None:
    """Return the global --data when it was given on the command line, else None.

    LOGQ_DATA and the default do not count, so the demo never writes into a
    data directory that was not named for it.
    """
    source = ctx.find_root().get_parameter_source("data")
    if source is not None and source.name == "COMMANDLINE":
        return global_options(ctx).data
    return None


@contextmanager
def _data_directory(directory: Path | None) -> Iterator[Path]:
    if directory is not None:
        yield directory
        return
    with tempfile.TemporaryDirectory(prefix="logq-demo-") as temporary:
        yield Path(temporary)


# -- the workload ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Order:
    """One order of the workload: its id, tier, priority and the values of its events."""

    order_id: str
    tier: str
    priority: int
    events: list[dict[str, Any]]


def plan_orders(count: int) -> list[Order]:
    """Return `count` orders of three events each, then one order with a total the workers cannot parse.

    Every 10th order (numbers ending in 3) is express, and every 50th (numbers
    25, 75, ...) is VIP, so the mix is the same for any count.
    """
    orders = [_order(number) for number in range(1, count + 1)]
    bad_id = f"order-{count + 1:05d}"
    orders.append(Order(bad_id, "standard", 0, [{"order_id": bad_id, "event": "created", "total": BAD_TOTAL}]))
    return orders


def _order(number: int) -> Order:
    order_id = f"order-{number:05d}"
    if number % 50 == 25:
        tier, priority = "vip", VIP_PRIORITY
    elif number % 10 == 3:
        tier, priority = "express", EXPRESS_PRIORITY
    else:
        tier, priority = "standard", 0
    total = round(5 + (number * 37) % 200 + 0.99, 2)
    events: list[dict[str, Any]] = [
        {"order_id": order_id, "event": "created", "tier": tier, "total": total},
        {"order_id": order_id, "event": "paid", "amount": total},
        {"order_id": order_id, "event": "shipped", "carrier": ("post", "courier")[number % 2]},
    ]
    return Order(order_id, tier, priority, events)


def parse_total(value: dict[str, Any], *, accept_decimal_comma: bool) -> float | None:
    """Return the total of a created event, or None for other events.

    Raises ValueError for a total that does not parse as a number.
    """
    total = value.get("total")
    if total is None:
        return None
    if isinstance(total, str) and accept_decimal_comma:
        total = total.replace(",", ".")
    return float(total)


# -- the workers and the auditor ---------------------------------------------------------------


@dataclass
class Fulfilment:
    """Record of the work done by the workers of the group `fulfilment`, shared by all of them.

    `receipts` lists (partition, offset, priority, event) in the order the
    group leased the messages, redeliveries included. `done` contains the
    (partition, offset) of processed messages, and `order_events` the event
    types of each order in processing order.
    """

    accept_decimal_comma: bool = False
    receipts: list[tuple[int, int, int, str]] = field(default_factory=list)
    done: set[tuple[int, int]] = field(default_factory=set)
    processed: Counter[str] = field(default_factory=Counter)
    order_events: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    failures: int = 0

    def process(self, message: Message) -> bool:
        """Handle one order event and return whether it could be processed."""
        try:
            parse_total(message.value, accept_decimal_comma=self.accept_decimal_comma)
        except ValueError:
            return False
        self.order_events[message.value["order_id"]].append(message.value["event"])
        return True


async def run_worker(log: Log, name: str, fulfilment: Fulfilment, stop: asyncio.Event) -> None:
    """Receive, process and ack order events as one consumer of the group `fulfilment`, until `stop`."""
    async with log.consumer(TOPIC, group=WORK_GROUP, auto_ack=False) as consumer:
        while not stop.is_set():
            messages = await consumer.receive(RECEIVE_BATCH, timeout=POLL_SECONDS)
            # No await since the receive returned, so the receipts keep the order of the leases.
            fulfilment.receipts.extend((m.partition, m.offset, m.priority, m.value["event"]) for m in messages)
            finished = []
            for message in messages:
                if not fulfilment.process(message):
                    await message.nack()
                    fulfilment.failures += 1
                    continue
                await asyncio.sleep(WORK_SECONDS)
                finished.append(message)
            if finished:
                await consumer.ack(finished)
                fulfilment.done.update((m.partition, m.offset) for m in finished)
                fulfilment.processed[name] += len(finished)


async def run_auditor(log: Log, counts: Counter[str], stop: asyncio.Event) -> None:
    """Count every message of the topic by event type in the group `audit`, until `stop` and nothing is left."""
    async with log.consumer(TOPIC, group=AUDIT_GROUP) as consumer:
        while True:
            messages = await consumer.receive(500, timeout=POLL_SECONDS)
            counts.update(message.value["event"] for message in messages)
            if not messages and stop.is_set():
                return


async def wait_until(condition: Callable[[], bool]) -> bool:
    """Poll `condition` until it is true or STEP_TIMEOUT_SECONDS pass, and return whether it became true."""
    deadline = time.monotonic() + STEP_TIMEOUT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(POLL_SECONDS)
    return True


# -- the run ----------------------------------------------------------------------------------


@dataclass
class DemoRun:
    """The facts a run collects for its summary."""

    orders: list[Order]
    produced: Counter[str]
    fulfilment: Fulfilment
    audit: Counter[str]
    dead_letters: list[DeadLetter]
    redrive: RedriveReport
    elapsed: float


async def run_demo(path: Path, order_count: int, *, progress: Callable[[str], None]) -> Summary:
    """Run the demo in the data directory `path` and return its summary.

    `progress` receives one line per step.
    """
    started = time.monotonic()
    async with logq.open(path) as log:
        await _check_fresh(log, path)
        orders = plan_orders(order_count)
        produced = await _create_and_produce(log, orders)
        progress(f"produced {sum(produced.values())} messages for {len(orders)} orders to topic {TOPIC!r} in {path}")
        fulfilment, audit = Fulfilment(), Counter[str]()
        stop = asyncio.Event()
        tasks = [asyncio.create_task(run_worker(log, name, fulfilment, stop)) for name in WORKER_NAMES]
        tasks.append(asyncio.create_task(run_auditor(log, audit, stop)))
        progress(f"started {len(WORKER_NAMES)} workers in group {WORK_GROUP!r} and an auditor in group {AUDIT_GROUP!r}")
        try:
            letters, report = await _fail_fix_and_redrive(log, fulfilment, sum(produced.values()), progress)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        progress(f"all workers stopped; the auditor counted {sum(audit.values())} messages")
    elapsed = time.monotonic() - started
    return summarize(DemoRun(orders, produced, fulfilment, audit, letters, report, elapsed))


async def _check_fresh(log: Log, path: Path) -> None:
    """Raise when the data directory already has the demo's topics or groups, which would skew its counts."""
    dlq_topic = f"{TOPIC}.{WORK_GROUP}.dlq"
    for topic in (TOPIC, dlq_topic):
        if topic in log.list_topics():
            raise TopicExistsError(
                f"topic {topic!r} already exists in {path}; run the demo in a new directory or without --data"
            )
    for group in (WORK_GROUP, AUDIT_GROUP):
        if group in log.list_groups():
            raise InvalidArgumentError(
                f"consumer group {group!r} already exists in {path}; run the demo in a new directory or without --data"
            )


async def _create_and_produce(log: Log, orders: list[Order]) -> Counter[str]:
    """Create the topic and groups, send every order's events, and return the count per event type."""
    await log.create_topic(TOPIC, partitions=PARTITIONS)
    await log.configure_group(WORK_GROUP, lease_timeout=LEASE_SECONDS, max_deliveries=MAX_DELIVERIES, key_ordering=True)
    produced: Counter[str] = Counter()
    for order in orders:
        # One batch per order keeps its events together and in order in one partition.
        await log.send_batch(TOPIC, order.events, key=order.order_id, priority=order.priority)
        produced.update(event["event"] for event in order.events)
    return produced


async def _fail_fix_and_redrive(
    log: Log, fulfilment: Fulfilment, total: int, progress: Callable[[str], None]
) -> tuple[list[DeadLetter], RedriveReport]:
    """Wait for the bad message to be dead-lettered, fix the workers, redrive it and wait for the rest."""
    await wait_until(lambda: len(fulfilment.done) >= total - 1 and fulfilment.failures >= MAX_DELIVERIES)
    letters = await log.dead_letters(TOPIC, group=WORK_GROUP)
    for letter in letters:
        progress(
            f"dead-lettered {TOPIC}/{letter.source_partition}@{letter.source_offset} after "
            f"{letter.delivery_count} deliveries: {letter.reason}"
        )
    fulfilment.accept_decimal_comma = True
    progress("fixed the workers: totals with a decimal comma are accepted now")
    report = await log.redrive(TOPIC, group=WORK_GROUP)
    progress(f"redrove {len(report.redriven)} of {len(letters)} dead letters to group {WORK_GROUP!r}")
    await wait_until(lambda: len(fulfilment.done) >= total)
    progress(f"the workers processed {len(fulfilment.done)} of {total} messages")
    return letters, report


# -- the summary ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SummaryRow:
    """One line of the summary: a count, or a check with its result ("ok" or "FAILED")."""

    name: str
    value: str
    result: str | None = None


@dataclass(frozen=True, slots=True)
class Summary:
    """The summary table of a run."""

    rows: list[SummaryRow]

    @property
    def checks(self) -> int:
        """Number of rows that are checks."""
        return sum(1 for row in self.rows if row.result is not None)

    @property
    def failed(self) -> int:
        """Number of checks that failed."""
        return sum(1 for row in self.rows if row.result == "FAILED")


def _check(name: str, value: str, passed: bool) -> SummaryRow:
    return SummaryRow(name, value, "ok" if passed else "FAILED")


def summarize(run: DemoRun) -> Summary:
    """Turn the facts of a run into counts and checks."""
    total = sum(run.produced.values())
    fulfilment = run.fulfilment
    rows = [SummaryRow("messages produced", str(total))]
    rows += [SummaryRow(f"processed by {name}", str(fulfilment.processed[name])) for name in WORKER_NAMES]
    rows.append(_check("messages processed", f"{len(fulfilment.done)} of {total}", len(fulfilment.done) == total))
    in_order, started = count_started_in_priority_order(fulfilment.receipts)
    rows.append(_check("orders started by priority", f"{in_order} of {started}", in_order == started == len(run.orders)))
    in_sequence = sum(1 for order in run.orders if fulfilment.order_events.get(order.order_id) == [e["event"] for e in order.events])
    rows.append(_check("order events in sequence", f"{in_sequence} of {len(run.orders)}", in_sequence == len(run.orders)))
    dead = [letter for letter in run.dead_letters if letter.delivery_count == MAX_DELIVERIES]
    rows.append(_check("dead-lettered", f"{len(run.dead_letters)} after {MAX_DELIVERIES} deliveries",
                       len(run.dead_letters) == 1 and len(dead) == 1))
    rows.append(_check("redriven", str(len(run.redrive.redriven)), len(run.redrive.redriven) == 1 and not run.redrive.skipped))
    for event_type in EVENT_TYPES:
        counted, produced = run.audit[event_type], run.produced[event_type]
        rows.append(_check(f"audit count of {event_type}", f"{counted} of {produced}", counted == produced))
    rows.append(SummaryRow("elapsed", f"{run.elapsed:.2f} s"))
    return Summary(rows)


def count_started_in_priority_order(receipts: list[tuple[int, int, int, str]]) -> tuple[int, int]:
    """Return how many orders started in priority order, and how many started at all.

    An order starts with the first delivery of its created event. All of them
    wait from the beginning, so within a partition a created event of lower
    priority must never be leased before one of higher priority.
    """
    seen: set[tuple[int, int]] = set()
    lowest: dict[int, int] = {}
    in_order = started = 0
    for partition, offset, priority, event in receipts:
        if event != "created" or (partition, offset) in seen:
            continue
        seen.add((partition, offset))
        started += 1
        if priority <= lowest.get(partition, priority):
            in_order += 1
        lowest[partition] = min(priority, lowest.get(partition, priority))
    return in_order, started
