"""Child process for tests/test_queue_crash.py: a worker of group "workers" on topic "jobs".

Usage:

    python queue_child.py work DIRECTORY
        Receive one message at a time, ack it and print "acked VALUE COUNT",
        until no message is ready, then exit with code 0. A message whose
        value is "poison" makes the process SIGKILL itself, as a handler that
        crashes the process would.
    python queue_child.py stall DIRECTORY COUNT
        Receive COUNT messages, ack the first and print "acked VALUE COUNT" for
        it, print "leased VALUE COUNT" for each other one, then wait until
        killed.

COUNT in the output is the delivery count of the message. The first child to
open DIRECTORY configures the group with max_deliveries=3.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import logq

TOPIC = "jobs"
GROUP = "workers"
MAX_DELIVERIES = 3


def report(status: str, message: logq.Message) -> None:
    print(status, message.value, message.delivery_count, flush=True)


async def work(consumer: logq.Consumer) -> None:
    while batch := await consumer.receive(1):
        [message] = batch
        if message.value == "poison":
            os.kill(os.getpid(), signal.SIGKILL)
        await message.ack()
        report("acked", message)


async def stall(consumer: logq.Consumer, count: int) -> None:
    first, *others = await consumer.receive(count)
    await first.ack()
    report("acked", first)
    for message in others:
        report("leased", message)
    await asyncio.Event().wait()


async def main(mode: str, directory: str, count: int) -> None:
    async with logq.open(directory) as log:
        if GROUP not in log.list_groups():
            await log.configure_group(GROUP, max_deliveries=MAX_DELIVERIES)
        consumer = log.consumer(TOPIC, group=GROUP, auto_ack=False)
        if mode == "work":
            await work(consumer)
        else:
            await stall(consumer, count)


if __name__ == "__main__":
    arguments = sys.argv[1:]
    if len(arguments) not in (2, 3) or arguments[0] not in ("work", "stall"):
        sys.exit(__doc__)
    asyncio.run(main(arguments[0], arguments[1], int(arguments[2]) if len(arguments) == 3 else 1))
