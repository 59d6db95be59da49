"""The end-to-end latency scenario of bench.compare: open-loop sends at a fixed rate to one consumer task.

A producer task sends one message per `send` call at the scheduled times
`start + i / rate` and never waits for the consumer. A consumer task in the
same event loop calls `receive_wait` and acks each message with `ack`. The
latency of message i is the time the consumer's receive returned it minus its
scheduled send time, not its actual send time. So a producer that falls behind
its schedule, because a send blocked or the event loop was busy, adds to the
latency instead of hiding it (coordinated omission).

The scenario also reports the send lag, the time between a message's
scheduled time and the start of its `send`, which tells the part of the
latency spent before the message reached the queue. A peer that cannot keep
up falls further behind with every message, so the producer stops sending at
a time limit and the run reports how many of the planned messages it sent.
"""

from __future__ import annotations

import asyncio
import math
from array import array
from dataclasses import dataclass
from pathlib import Path

from bench.peers.base import Durability, Peer, QueueClient, Workload, check_exactly_once
from bench.scenarios import make_value

LATENCY = "end-to-end latency"

# Seconds between opening the queue and the first scheduled send, so that the
# consumer task is waiting before the producer starts.
START_DELAY_SECONDS = 0.01

# Max seconds one `receive_wait` call waits, so the consumer checks its stop
# conditions at least this often.
RECEIVE_TIMEOUT_SECONDS = 0.1

# After the producer finished, the consumer stops once its receives found no
# message for this many seconds in a row. The messages still missing then count as lost.
IDLE_STOP_SECONDS = 1.0

# The producer stops sending this long after the last scheduled send time, or
# after as long again as the schedule lasts when that is longer. Only a peer
# that cannot keep up with the rate reaches the limit.
MIN_OVERRUN_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class LatencySample:
    """One latency run at one send rate: percentiles in µs, achieved rate and delivery check findings.

    `messages` counts the measured messages sent, which is less than
    `planned_messages` when the producer stopped at the time limit. The
    percentiles and the achieved rate are None when messages were lost,
    because the received ids can then no longer be mapped back to their
    sends, and when no measured message was sent.
    """

    rate: int
    planned_messages: int
    messages: int
    p50_us: float | None
    p99_us: float | None
    p999_us: float | None
    max_us: float | None
    achieved_rate: float | None
    send_lag_p50_us: float | None
    send_lag_p99_us: float | None
    errors: tuple[str, ...]

    @property
    def stopped_at_time_limit(self) -> bool:
        """Whether the producer stopped before it sent every planned message."""
        return self.messages < self.planned_messages


@dataclass(slots=True)
class Deliveries:
    """The id and receive time (event loop clock) of every message in delivery order."""

    ids: array
    times: array

    @classmethod
    def empty(cls) -> Deliveries:
        """Return a record of no deliveries."""
        return cls(array("q"), array("d"))


@dataclass(frozen=True, slots=True)
class Schedule:
    """When the producer sends: message i at `start + i / rate` (event loop clock), none after `stop`."""

    start: float
    rate: int
    count: int
    stop: float

    def time_of(self, index: int) -> float:
        """Return the scheduled send time of message `index`."""
        return self.start + index / self.rate


async def run_latency(peer: Peer, directory: Path, durability: Durability, workload: Workload,
                      rate: int) -> LatencySample:
    """Send at `rate` messages per second for the warm-up and measured seconds of `workload`; return the stats.

    The messages of the warm-up are sent and received like the others but
    left out of the percentiles and the achieved rate.
    """
    value = make_value(workload.value_bytes)
    warmup_count = round(rate * workload.latency_warmup_seconds)
    count = warmup_count + max(1, round(rate * workload.latency_seconds))
    deliveries = Deliveries.empty()
    send_lags = array("d")
    client = await peer.open(directory, durability, workload)
    try:
        loop = asyncio.get_running_loop()
        start = loop.time() + START_DELAY_SECONDS
        duration = count / rate
        schedule = Schedule(start, rate, count, stop=start + duration + max(MIN_OVERRUN_SECONDS, duration))
        # The task group cancels the other task when one raises, and raises an ExceptionGroup.
        async with asyncio.TaskGroup() as tasks:
            producer = tasks.create_task(send_on_schedule(client, value, schedule, send_lags))
            tasks.create_task(receive_until_done(client, workload.batch_size, producer, deliveries))
        await client.finish_consuming()
    finally:
        await client.close()
    return summarize_latency(deliveries, send_lags, schedule, warmup_count)


async def send_on_schedule(client: QueueClient, value: bytes, schedule: Schedule, send_lags: array) -> int:
    """Send message i at `schedule.time_of(i)`, or at once when late; return how many were sent.

    Stops early when a send would start after `schedule.stop`. Appends each
    send's lag, in seconds, to `send_lags`. A late producer still yields to
    the event loop before each send, so the consumer task gets its turns.
    """
    loop = asyncio.get_running_loop()
    for index in range(schedule.count):
        scheduled = schedule.time_of(index)
        delay = scheduled - loop.time()
        await asyncio.sleep(delay if delay > 0 else 0)
        now = loop.time()
        if now >= schedule.stop:
            return index
        send_lags.append(now - scheduled)
        await client.send(value)
    return schedule.count


async def receive_until_done(client: QueueClient, max_messages: int, producer: asyncio.Task[int],
                             deliveries: Deliveries) -> None:
    """Receive, and ack one message at a time, until every sent message arrived, recording each in `deliveries`.

    Stops once the producer finished and either the deliveries reach the
    number it sent or receives found nothing for IDLE_STOP_SECONDS.
    """
    loop = asyncio.get_running_loop()
    idle_since: float | None = None
    while not (producer.done() and len(deliveries.ids) >= producer.result()):
        messages = await client.receive_wait(max_messages, RECEIVE_TIMEOUT_SECONDS)
        now = loop.time()
        if messages:
            idle_since = None
            for message_id in client.message_ids(messages):
                deliveries.ids.append(message_id)
                deliveries.times.append(now)
            for message in messages:
                await client.ack(message)
        elif producer.done():
            if idle_since is None:
                idle_since = now
            elif now - idle_since >= IDLE_STOP_SECONDS:
                return


def summarize_latency(deliveries: Deliveries, send_lags: array, schedule: Schedule,
                      warmup_count: int) -> LatencySample:
    """Map each delivery back to its send and return the percentiles of the measured messages.

    The ids of a queue increase in send order (see QueueClient), so when every
    sent message arrived, the rank of an id among the distinct ids is its send
    index. A repeated delivery counts at its first arrival.
    """
    sent = len(send_lags)
    planned = schedule.count - warmup_count
    measured = max(0, sent - warmup_count)
    errors = list(check_exactly_once(deliveries.ids, sent))
    lag_us = sorted(lag * 1e6 for lag in send_lags[warmup_count:])
    lag_p50 = percentile(lag_us, 0.50) if lag_us else None
    lag_p99 = percentile(lag_us, 0.99) if lag_us else None
    distinct_ids = sorted(set(deliveries.ids))
    if len(distinct_ids) != sent or measured == 0:
        return LatencySample(schedule.rate, planned, measured, None, None, None, None, None, lag_p50, lag_p99,
                             tuple(errors))

    send_index = {message_id: index for index, message_id in enumerate(distinct_ids)}
    first_arrival: dict[int, float] = {}
    for message_id, time in zip(deliveries.ids, deliveries.times):
        first_arrival.setdefault(send_index[message_id], time)
    latencies_us = []
    last_arrival = schedule.start
    for index in range(warmup_count, sent):
        arrival = first_arrival[index]
        latencies_us.append((arrival - schedule.time_of(index)) * 1e6)
        last_arrival = max(last_arrival, arrival)
    latencies_us.sort()
    if latencies_us[0] < 0:
        errors.append(
            f"a message arrived {-latencies_us[0]:.0f} µs before its scheduled send, so the peer's message ids "
            "do not increase in send order and the latencies are wrong"
        )
    first_scheduled = schedule.time_of(warmup_count)
    achieved = measured / (last_arrival - first_scheduled) if last_arrival > first_scheduled else None
    return LatencySample(
        rate=schedule.rate,
        planned_messages=planned,
        messages=measured,
        p50_us=percentile(latencies_us, 0.50),
        p99_us=percentile(latencies_us, 0.99),
        p999_us=percentile(latencies_us, 0.999),
        max_us=latencies_us[-1],
        achieved_rate=achieved,
        send_lag_p50_us=lag_p50,
        send_lag_p99_us=lag_p99,
        errors=tuple(errors),
    )


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Return the nearest-rank percentile of a non-empty sorted list.

    That is the smallest value with at least `fraction` of the values at or below it.
    """
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]
