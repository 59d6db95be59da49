"""The work-queue commands of `logq`: peek, groups configure, and dlq list, show, redrive and purge.

`logq.cli` registers them on the app. Each command runs one coroutine against
the data directory and prints its result as text, or as JSON with --json.
"""

from dataclasses import asdict
from typing import Annotated, Any

import typer

from logq import InvalidConfigError, Log, Message, NotFoundError
from logq.cli_common import (
    ExitCode,
    GroupArgument,
    GroupOption,
    JsonOption,
    TopicArgument,
    confirm_or_exit,
    run_with_log,
)
from logq.cli_format import (
    dead_letter_to_json,
    format_dead_letter,
    format_dead_letters,
    format_group_config,
    print_messages,
    redrive_lines,
    redrive_to_json,
    to_json_line,
)
from logq.cli_input import check_minimum
from logq.consumers import GroupConfig
from logq.dead_letters import DeadLetter, RedriveReport

dlq_app = typer.Typer(
    help="List, show, redrive and purge the dead letters of a consumer group.", no_args_is_help=True,
    rich_markup_mode=None,
)


# -- peek -------------------------------------------------------------------------------


def peek(
    ctx: typer.Context,
    topic: TopicArgument,
    group: GroupOption,
    count: Annotated[int, typer.Option("--count", "-n", help="Number of messages to show, 1 or more.")] = 1,
    json_output: JsonOption = False,
) -> None:
    """Show the messages the group's next receive would return, changing no delivery state.

    The order is the one receive uses: most urgent priority first, then by
    offset. The delivery count shown is the one the message would have if it
    were received now. The group must exist.

    \b
    Example:
        logq peek orders --group billing --count 5
    """
    check_minimum(count, 1, "--count")

    async def work(log: Log) -> list[Message]:
        # Log.peek would create a missing group, so check first.
        await log.group_config(group)
        return await log.peek(topic, group=group, max_messages=count)

    # Log.peek returns the deliveries so far, and a receive now would count one more.
    # NOTE: the Message docstring documents 0 for peek, and test_peek_json_delivery_count
    # fails if Log.peek changes to that.
    messages = [
        Message.from_record(message.topic, message.partition, message._record, group=message.group,
                            delivery_count=message.delivery_count + 1)
        for message in run_with_log(ctx, work)
    ]
    if messages:
        print_messages(messages, json_output=json_output)
    elif not json_output:
        typer.echo(f"no message of topic {topic!r} is ready for group {group!r}", err=True)


# -- groups configure -------------------------------------------------------------------


def groups_configure(
    ctx: typer.Context,
    group: GroupArgument,
    lease_timeout: Annotated[
        float | None, typer.Option(help="Seconds a consumer may keep a message leased before the delivery counts as failed.")
    ] = None,
    max_deliveries: Annotated[
        int | None,
        typer.Option(help="Deliveries after which a failed message goes to the dead-letter topic, or 0 to never dead-letter."),
    ] = None,
    dead_letter_topic: Annotated[
        str | None, typer.Option(help="Dead-letter topic. An empty value restores the default TOPIC.GROUP.dlq.")
    ] = None,
    retry_delay: Annotated[
        float | None, typer.Option(help="Seconds before a failed message is delivered again. 0 redelivers at once.")
    ] = None,
    retry_backoff: Annotated[
        float | None, typer.Option(help="Factor, 1 to 100, by which the retry delay grows with each further failure.")
    ] = None,
    retry_max_delay: Annotated[float | None, typer.Option(help="Upper bound of the retry delay, in seconds.")] = None,
    key_ordering: Annotated[
        bool | None,
        typer.Option(
            "--key-ordering/--no-key-ordering",
            help="Hold back a key's later messages while an earlier one is in flight or waiting for redelivery.",
        ),
    ] = None,
    starvation_limit: Annotated[
        int | None,
        typer.Option(
            help="Deliveries in a row that may pass over an older waiting message before it is delivered. "
            "0 turns the limit off (strict priority order)."
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Change a consumer group's settings and print all of them, creating the group if it does not exist.

    Settings that are not given keep their values. Consumers of the group
    use the new settings from their next receive on.

    \b
    Example:
        logq groups configure billing --lease-timeout 10 --max-deliveries 3 --retry-delay 1
    """
    if starvation_limit is not None and starvation_limit < 0:
        # A range error of a group setting exits with INVALID, as --max-deliveries -1 does.
        raise InvalidConfigError(
            f"--starvation-limit {starvation_limit} is invalid; use 0 (no limit, strict priority order) or an int >= 1"
        )
    changes: dict[str, Any] = {
        "lease_timeout": lease_timeout,
        "max_deliveries": max_deliveries,
        "dead_letter_topic": dead_letter_topic,
        "retry_delay": retry_delay,
        "retry_backoff": retry_backoff,
        "retry_max_delay": retry_max_delay,
        "key_ordering": key_ordering,
        "starvation_limit": starvation_limit,
    }
    changes = {name: value for name, value in changes.items() if value is not None}
    if not changes:
        ctx.fail(
            "give at least one setting to change, such as --lease-timeout 10; "
            f"`logq groups describe {group}` shows the current ones"
        )
    # The empty topic name and a limit of 0 stand for None, which an option cannot pass.
    if changes.get("dead_letter_topic") == "":
        changes["dead_letter_topic"] = None
    if changes.get("starvation_limit") == 0:
        changes["starvation_limit"] = None

    async def work(log: Log) -> GroupConfig:
        return await log.configure_group(group, **changes)

    config = run_with_log(ctx, work)
    if json_output:
        typer.echo(to_json_line(_config_to_json(group, config)))
    else:
        typer.echo(format_group_config(group, config))


def _config_to_json(group: str, config: GroupConfig) -> dict[str, Any]:
    return {"group": group, "config": asdict(config)}


# -- dlq ---------------------------------------------------------------------------------


@dlq_app.command("list")
def dlq_list(ctx: typer.Context, topic: TopicArgument, group: GroupOption, json_output: JsonOption = False) -> None:
    """List the dead letters a group produced for a topic, oldest first.

    \b
    Example:
        logq dlq list orders --group billing
    """

    async def work(log: Log) -> list[DeadLetter]:
        return await log.dead_letters(topic, group=group)

    letters = run_with_log(ctx, work)
    if json_output:
        typer.echo(to_json_line([dead_letter_to_json(letter, with_message=False) for letter in letters]))
    elif not letters:
        typer.echo(f"group {group!r} has no dead letters for topic {topic!r}", err=True)
    else:
        typer.echo(format_dead_letters(letters))


@dlq_app.command("show")
def dlq_show(
    ctx: typer.Context,
    topic: TopicArgument,
    group: GroupOption,
    offset: Annotated[int, typer.Argument(metavar="OFFSET", help="Offset of the dead letter in the dead-letter topic.")],
    json_output: JsonOption = False,
) -> None:
    """Show one dead letter: where it came from, why it failed, all its headers and its value.

    \b
    Example:
        logq dlq show orders --group billing 0
    """
    check_minimum(offset, 0, "OFFSET")

    async def work(log: Log) -> DeadLetter:
        letters = await log.dead_letters(topic, group=group)
        for letter in letters:
            if letter.dlq_offset == offset:
                return letter
        raise NotFoundError(
            f"offset {offset} is not a dead letter of group {group!r} for topic {topic!r}; "
            f"`logq dlq list {topic} --group {group}` lists them"
        )

    letter = run_with_log(ctx, work)
    if json_output:
        typer.echo(to_json_line(dead_letter_to_json(letter, with_message=True)))
    else:
        typer.echo(format_dead_letter(letter))


@dlq_app.command("redrive")
def dlq_redrive(
    ctx: typer.Context,
    topic: TopicArgument,
    group: GroupOption,
    offsets: Annotated[
        list[int] | None,
        typer.Argument(metavar="OFFSET", help="Dead-letter offsets to redrive. [default: every dead letter not yet redriven]"),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Make dead letters ready again in the group that failed them, with a fresh delivery count.

    Prints each dead letter redriven, and each one skipped with the reason.
    Other groups are not affected. The exit code is 0 when at least one dead
    letter was redriven or none was waiting for a redrive, and 8 when some
    were requested and none could be redriven.

    \b
    Example:
        logq dlq redrive orders --group billing 3 4
    """
    for offset in offsets or []:
        check_minimum(offset, 0, "OFFSET")

    async def work(log: Log) -> tuple[list[DeadLetter], RedriveReport]:
        letters = await log.dead_letters(topic, group=group)
        return letters, await log.redrive(topic, group=group, offsets=offsets or None)

    letters, report = run_with_log(ctx, work)
    requested = sorted(set(offsets)) if offsets else [letter.dlq_offset for letter in letters if not letter.redriven]
    if json_output:
        typer.echo(to_json_line(redrive_to_json(report)))
    else:
        lines = redrive_lines(report, {letter.dlq_offset: letter for letter in letters})
        if lines:
            typer.echo("\n".join(lines))
    if not requested:
        typer.echo(f"group {group!r} has no dead letters for topic {topic!r} that wait for a redrive", err=True)
    elif not report.redriven:
        typer.echo("error: no dead letter was redriven; each requested one was skipped for the reason printed above", err=True)
        raise typer.Exit(ExitCode.NOTHING_REDRIVEN)
    elif not json_output:
        typer.echo(f"redriven {len(report.redriven)} of {len(requested)} dead letters", err=True)


@dlq_app.command("purge")
def dlq_purge(
    ctx: typer.Context,
    topic: TopicArgument,
    group: GroupOption,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Purge without asking for confirmation.")] = False,
) -> None:
    """Delete the group's dead-letter topic for a topic, with all its dead letters, after a confirmation.

    Without --yes it prompts on the terminal, and fails when standard input
    is not a terminal. A dead-letter topic set with `groups configure
    --dead-letter-topic` and shared by several topics loses the dead letters
    of all of them.

    \b
    Example:
        logq dlq purge orders --group billing --yes
    """

    async def describe(log: Log) -> tuple[str, int | None]:
        log.describe_topic(topic)
        dlq_topic = (await log.group_config(group)).dead_letter_topic_for(topic, group)
        if dlq_topic not in log.list_topics():
            return dlq_topic, None
        return dlq_topic, log.describe_topic(dlq_topic).messages

    async def purge(log: Log) -> int:
        return await log.purge_dead_letters(topic, group=group)

    # The data directory stays unlocked while the prompt waits for an answer.
    dlq_topic, messages = run_with_log(ctx, describe)
    if messages is None:
        typer.echo(f"dead-letter topic {dlq_topic!r} does not exist, so there is nothing to purge", err=True)
        return
    if not yes:
        confirm_or_exit(
            f"Delete dead-letter topic {dlq_topic!r} and its {messages} messages?",
            refusal=f"not purging dead-letter topic {dlq_topic!r}",
            declined=f"dead-letter topic {dlq_topic!r} was not purged",
        )
    purged = run_with_log(ctx, purge)
    typer.echo(f"purged {purged} dead letters by deleting topic {dlq_topic}")
