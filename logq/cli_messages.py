"""The commands `logq produce`, `logq consume` and `logq replay`, and the async work behind them.

`logq.cli` registers the command functions on the app. Output is printed as
the messages arrive, in one write per batch.
"""

import contextlib
import math
import os
import sys
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, BinaryIO

import typer

from logq import Consumer, InvalidArgumentError, InvalidConfigError, Log, Message, MessageTooLargeError, TopicConfig
from logq.cli_common import CountOption, JsonOption, TopicArgument, run_with_log
from logq.cli_format import print_messages, to_json_line
from logq.cli_input import StopSignal, check_minimum, parse_headers, parse_time, parse_value, read_stdin_lines
from logq.log import MAX_PRIORITY
from logq.message import encode_value
from logq.topics import partition_for_key

DEFAULT_TIMEOUT_SECONDS = 1.0
# Messages asked for per receive and printed per write to stdout.
PRINT_BATCH = 500


class AckMode(Enum):
    """Action `consume` takes on each message after printing it."""

    ACK = "ack"  # mark it done for the group
    NACK = "nack"  # report a failed delivery, so the group redelivers it
    NONE = "none"  # leave it leased, so closing the consumer makes it ready again


def produce(
    ctx: typer.Context,
    topic: TopicArgument,
    values: Annotated[
        list[str] | None,
        typer.Argument(metavar="VALUES", help="Message values, one message each. [default: one message per stdin line]"),
    ] = None,
    key: Annotated[
        str | None, typer.Option("--key", "-k", help="Message key. Messages with one key go to one partition.")
    ] = None,
    priority: Annotated[int, typer.Option(help=f"Priority from 0 to {MAX_PRIORITY}, where higher is more urgent.")] = 0,
    header: Annotated[
        list[str] | None, typer.Option("--header", "-H", help="Header as NAME=VALUE. Repeat the option for more headers.")
    ] = None,
    json_values: Annotated[
        bool, typer.Option("--json-values", help="Parse each value as JSON and store it as JSON, not as UTF-8 bytes.")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Send messages: each VALUE argument, or else each line of standard input, is one message.

    Creates the topic with default settings if it does not exist. Prints the
    offset of each message, or one JSON object per message with --json.

    \b
    Example:
        logq produce orders '{"id": 1}' --json-values --key customer-7
        tail -f app.log | logq produce app-log
    """
    if not 0 <= priority <= MAX_PRIORITY:
        raise typer.BadParameter(
            f"{priority} is out of range; use 0 (the default) to {MAX_PRIORITY}, higher is more urgent",
            param_hint="'--priority'",
        )
    send_options = {
        # os.fsencode gives back the bytes the OS passed, also for a key that is not valid UTF-8.
        "key": None if key is None else os.fsencode(key),
        "headers": parse_headers(header),
        "priority": priority,
        "json_output": json_output,
    }
    payloads = [parse_value(value, f"value {n}", json_values=json_values) for n, value in enumerate(values or [], 1)]

    async def work(log: Log) -> None:
        if payloads:
            await send_and_print(log, topic, payloads, **send_options)
        else:
            stdin = typer.get_binary_stream("stdin")
            await send_stdin_lines(log, topic, stdin, json_values=json_values, **send_options)

    run_with_log(ctx, work)


def consume(
    ctx: typer.Context,
    topic: TopicArgument,
    group: Annotated[str, typer.Option("--group", "-g", help="Consumer group to read as, created on first use.")],
    count: CountOption = None,
    timeout: Annotated[
        float | None,
        typer.Option(help=f"Stop when no message arrives for this many seconds. [default: {DEFAULT_TIMEOUT_SECONDS}]"),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Wait for new messages until Ctrl-C or SIGTERM, then exit 0.")
    ] = False,
    no_ack: Annotated[
        bool,
        typer.Option(
            "--no-ack",
            help="Print the messages without acking or nacking them. When the command exits, its consumer closes "
            "and releases them for redelivery. Each run counts as one delivery toward the group's max deliveries.",
        ),
    ] = False,
    lease: Annotated[
        float | None,
        typer.Option(help="Lease of each received message in seconds, above 0. [default: the group's lease timeout]"),
    ] = None,
    nack: Annotated[
        bool,
        typer.Option(
            "--nack",
            help="Nack each message after printing it instead of acking it, to test redelivery and dead-lettering.",
        ),
    ] = False,
    nack_delay: Annotated[
        float | None,
        typer.Option(help="With --nack: seconds before the group redelivers a nacked message. [default: the group's retry policy]"),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Receive messages as a member of a consumer group, and ack each one once it is printed.

    A new group starts at the log start offset, and a known group continues at
    its committed offset. Human output is one `partition:offset key value` line
    per message, followed by ` [delivery N]` for a redelivered message, and
    --json prints one JSON object per line. --no-ack and --nack change what
    happens to a message after it is printed.

    \b
    Example:
        logq consume orders --group billing --count 10 --json
    """
    check_minimum(count, 1, "--count")
    check_minimum(timeout, 0, "--timeout")
    check_lease(lease)
    if follow and timeout is not None:
        raise typer.BadParameter("--follow waits without a time limit; drop --timeout or --follow", param_hint="'--timeout'")
    ack_mode = choose_ack_mode(no_ack=no_ack, nack=nack, nack_delay=nack_delay)
    wait = DEFAULT_TIMEOUT_SECONDS if timeout is None else timeout
    if follow:
        wait = None

    async def work(log: Log) -> None:
        await consume_and_print(
            log, topic, group, count=count, timeout=wait, json_output=json_output, ack_mode=ack_mode, lease=lease,
            nack_delay=nack_delay,
        )

    run_with_log(ctx, work)


def check_lease(lease: float | None) -> None:
    """Raise a usage error for a --lease that is not a finite number of seconds above 0."""
    if lease is not None and not (lease > 0 and math.isfinite(lease)):
        raise typer.BadParameter(f"{lease} is not a valid lease; pass a finite number of seconds above 0", param_hint="'--lease'")


def choose_ack_mode(*, no_ack: bool, nack: bool, nack_delay: float | None) -> AckMode:
    """Return the ack mode of `consume`, raising a usage error for options that do not fit together."""
    if no_ack and nack:
        raise typer.BadParameter("--no-ack leaves messages leased and --nack nacks them; pass one of them", param_hint="'--nack'")
    if nack_delay is not None and not nack:
        raise typer.BadParameter("--nack-delay applies only with --nack; add --nack or drop --nack-delay", param_hint="'--nack-delay'")
    check_minimum(nack_delay, 0, "--nack-delay")
    if nack:
        return AckMode.NACK
    return AckMode.NONE if no_ack else AckMode.ACK


def replay(
    ctx: typer.Context,
    topic: TopicArgument,
    from_offset: Annotated[
        int | None, typer.Option(help="Start at this offset in each partition. [default: the log start offset]")
    ] = None,
    from_time: Annotated[
        str | None,
        typer.Option(help="Start at the first message appended at or after this ISO 8601 time, in UTC when no zone is given."),
    ] = None,
    partition: Annotated[int | None, typer.Option(help="Read only this partition. [default: all, merged by time]")] = None,
    count: CountOption = None,
    json_output: JsonOption = False,
) -> None:
    """Read a topic up to its current end without a consumer group, so nothing is acked.

    \b
    Example:
        logq replay orders --from-time 2024-05-01T12:00:00Z --json
    """
    check_minimum(from_offset, 0, "--from-offset")
    check_minimum(count, 1, "--count")
    if from_offset is not None and from_time is not None:
        raise typer.BadParameter(
            "give one start, --from-offset or --from-time, not both", param_hint="'--from-offset' / '--from-time'"
        )
    start_time = None if from_time is None else parse_time(from_time, "--from-time")

    async def work(log: Log) -> None:
        await replay_and_print(
            log, topic, from_offset=from_offset, from_time=start_time, partition=partition, count=count,
            json_output=json_output,
        )

    run_with_log(ctx, work)


async def send_and_print(
    log: Log,
    topic: str,
    payloads: list[Any],
    *,
    key: bytes | None,
    headers: dict[str, str],
    priority: int,
    json_output: bool,
) -> None:
    """Send payloads with one `Log.send_batch` call and print their offsets."""
    offsets = await log.send_batch(topic, payloads, key=key, headers=headers or None, priority=priority)
    if not json_output:
        typer.echo("\n".join(str(offset) for offset in offsets))
        return
    partitions = log.describe_topic(topic).config.partitions
    partition: int | None = None
    if partitions == 1:
        partition = 0
    elif key is not None:
        partition = partition_for_key(key, partitions)
    # NOTE: a keyless message on a topic of several partitions prints "partition": null,
    # because Log.send_batch returns offsets only and picks the partition round-robin.
    typer.echo("\n".join(to_json_line({"topic": topic, "partition": partition, "offset": o}) for o in offsets))


async def send_stdin_lines(
    log: Log,
    topic: str,
    stream: BinaryIO,
    *,
    json_values: bool,
    **send_options: Any,
) -> None:
    """Send each line of `stream` as one message, one record batch per read, as the lines arrive.

    A line that does not parse, or that is above the topic's max message size,
    stops the command: every line before it is sent and printed, and the error
    (InvalidArgumentError, or MessageTooLargeError) names the line.
    """
    line_number = 0
    async for lines in read_stdin_lines(stream):
        first_line = line_number + 1
        payloads = []
        for line in lines:
            line_number += 1
            try:
                payloads.append(parse_value(line, f"line {line_number} of standard input", json_values=json_values))
            except (InvalidArgumentError, typer.BadParameter):
                if payloads:
                    await send_lines(log, topic, payloads, first_line, **send_options)
                raise
        await send_lines(log, topic, payloads, first_line, **send_options)


async def send_lines(
    log: Log, topic: str, payloads: list[Any], first_line: int, *, key: bytes | None, headers: dict[str, str],
    **send_options: Any,
) -> None:
    """Send the payloads of consecutive lines of standard input, the first being line `first_line`.

    All of them are sent as one batch, unless one is above the topic's max
    message size. Then the lines before that one are sent, and a
    MessageTooLargeError names its line number, its size and the limit.
    """
    try:
        await send_and_print(log, topic, payloads, key=key, headers=headers, **send_options)
        return
    except MessageTooLargeError:
        # Log.send_batch checks every size before it appends, so nothing was stored.
        limit = log.describe_topic(topic).config.max_message_bytes
        shared_bytes = len(key or b"") + sum(len(name.encode()) + len(text.encode()) for name, text in headers.items())
        sizes = (len(encode_value(payload)[0]) + shared_bytes for payload in payloads)
        oversized = next(((index, size) for index, size in enumerate(sizes) if size > limit), None)
        if oversized is None:
            raise  # the sizes above do not explain the error, so pass it on unchanged
    index, size = oversized
    if index:
        await send_and_print(log, topic, payloads[:index], key=key, headers=headers, **send_options)
    raise MessageTooLargeError(too_large_line_message(topic, first_line + index, size, limit, shared_bytes)) from None


def too_large_line_message(topic: str, line_number: int, size: int, limit: int, shared_bytes: int) -> str:
    """Return the error for line `line_number` of standard input, whose message of `size` bytes is above `limit`.

    `shared_bytes` is the size of the key and headers, which count toward the limit.
    """
    size_text = f"{size} bytes with its key and headers" if shared_bytes else f"{size} bytes"
    if line_number == 1:
        sent = "no line was sent"
    elif line_number == 2:
        sent = "line 1 was sent"
    else:
        sent = f"lines 1 to {line_number - 1} were sent"
    try:
        TopicConfig(max_message_bytes=size)
    except InvalidConfigError:
        fix = "Split the line, because no topic accepts a message that large"
    else:
        fix = f"Shorten the line, or produce to a topic created with `logq topics create NAME --max-message-bytes {size}`"
    return (
        f"line {line_number} of standard input makes a message of {size_text}, above the max message size "
        f"of topic {topic!r} ({limit} bytes); {sent}, line {line_number} and the lines after it were not. {fix}"
    )


async def consume_and_print(
    log: Log,
    topic: str,
    group: str,
    *,
    count: int | None,
    timeout: float | None,
    json_output: bool,
    ack_mode: AckMode = AckMode.ACK,
    lease: float | None = None,
    nack_delay: float | None = None,
) -> None:
    """Receive as a member of `group` and print; `timeout=None` follows until SIGINT or SIGTERM.

    `lease` is in seconds (None: the group's lease timeout), and `nack_delay`
    applies under AckMode.NACK (None: the group's retry policy).
    """
    receiver = _Receiver(ack_mode=ack_mode, lease=lease, nack_delay=nack_delay, json_output=json_output)
    async with log.consumer(topic, group=group, auto_ack=False) as consumer:
        if timeout is not None:
            await receiver.print_until_done(consumer, count, timeout, None)
            return
        with StopSignal() as stop:
            await receiver.print_until_done(consumer, count, None, stop)


class _Receiver:
    """The receive, print and ack loop of `consume`, with its options."""

    def __init__(self, *, ack_mode: AckMode, lease: float | None, nack_delay: float | None, json_output: bool) -> None:
        self.ack_mode = ack_mode
        self.lease = lease
        self.nack_delay = nack_delay
        self.json_output = json_output

    async def print_until_done(
        self, consumer: Consumer, count: int | None, timeout: float | None, stop: StopSignal | None
    ) -> None:
        """Print messages until `count`, a receive that times out, or a stop signal.

        Each batch is acked (or nacked) after it was written and flushed to
        stdout, so a message the reader never got goes back to the group.
        """
        received = 0
        while count is None or received < count:
            limit = PRINT_BATCH if count is None else min(PRINT_BATCH, count - received)
            request = consumer.receive(limit, timeout=timeout, lease=self.lease)
            messages = await (request if stop is None else stop.run(request))
            if not messages:
                return
            print_messages(messages, json_output=self.json_output)
            sys.stdout.flush()
            await self.finish(consumer, messages)
            received += len(messages)

    async def finish(self, consumer: Consumer, messages: list[Message]) -> None:
        """Ack or nack printed messages, or leave them leased, according to the ack mode."""
        if self.ack_mode is AckMode.ACK:
            await consumer.ack(messages)
        elif self.ack_mode is AckMode.NACK:
            # A nacked message is ready again at once unless a delay applies, so this
            # run may receive it again, up to the group's max deliveries.
            for message in messages:
                await consumer.nack(message, delay=self.nack_delay)


async def replay_and_print(
    log: Log,
    topic: str,
    *,
    from_offset: int | None,
    from_time: datetime | None,
    partition: int | None,
    count: int | None,
    json_output: bool,
) -> None:
    """Print a topic's messages from a start point up to its high watermarks, without a group."""
    batch: list[Message] = []
    printed = 0
    replayed = log.replay(topic, from_offset=from_offset, from_time=from_time, partition=partition)
    try:
        async with contextlib.aclosing(replayed):  # type: ignore[type-var]
            async for message in replayed:
                batch.append(message)
                printed += 1
                if len(batch) >= PRINT_BATCH:
                    print_messages(batch, json_output=json_output)
                    batch = []
                if count is not None and printed >= count:
                    break
    finally:
        # Also when a read fails (a damaged batch): the messages before it were read correctly.
        if batch:
            print_messages(batch, json_output=json_output)
