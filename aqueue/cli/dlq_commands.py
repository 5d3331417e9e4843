"""``aqueue dlq ls|show|replay|purge``: the dead letters of a queue, for operators.

Thin click commands: the work is in ``aqueue._admin`` (operations), the broker's
``requeue_dead_letters`` and ``purge_dead_letters``, and ``aqueue._admin_format``
(how dead letters are shown).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click

from .. import _admin, _admin_format
from .._admin import AdminError
from ._common import DURATION, EXIT_RUNTIME_ERROR, fail
from ._operator import broker_option, echo_json, json_option, operate, operator_broker

__all__ = ["dlq", "dlq_ls", "dlq_purge", "dlq_replay", "dlq_show"]


@click.group()
def dlq() -> None:
    """Dead letters: list, show, replay and purge the messages that failed for good."""


@dlq.command("ls")
@click.argument("queue")
@broker_option
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Show at most this many.",
)
@json_option
def dlq_ls(queue: str, broker_spec: str | None, limit: int, as_json: bool) -> None:
    """List the dead letters of QUEUE (they stay in QUEUE.XQ): id, actor, reason, failed at."""
    broker = operator_broker(broker_spec)

    async def work() -> tuple[list[Any], int]:
        try:
            return await _admin.list_dead_letters(broker, queue, limit=limit)
        finally:
            await broker.close()

    letters, total = operate(work)
    if as_json:
        echo_json([_admin_format.letter_summary(letter) for letter in letters])
        return
    if not letters:
        click.echo(f"no dead letters in {queue}.XQ")
        return
    click.echo(_admin_format.dead_letters_table(letters))
    if total > len(letters):
        click.echo(f"({len(letters)} of {total} shown; use --limit to see more)")


@dlq.command("show")
@click.argument("queue")
@click.argument("message_id")
@broker_option
@json_option
def dlq_show(queue: str, message_id: str, broker_spec: str | None, as_json: bool) -> None:
    """Show the dead letter MESSAGE_ID of QUEUE: message, failure headers and traceback."""
    broker = operator_broker(broker_spec)

    async def work() -> list[Any]:
        try:
            return await _admin.find_dead_letters(broker, queue, message_id)
        finally:
            await broker.close()

    letters = operate(work)
    if as_json:
        details = [_admin_format.letter_details(letter) for letter in letters]
        echo_json(details[0] if len(details) == 1 else details)
        return
    click.echo("\n\n".join(_admin_format.letter_text(letter, queue) for letter in letters))


@dlq.command("replay")
@click.argument("queue")
@click.option("--id", "message_ids", multiple=True, metavar="ID", help="Replay this one (repeat).")
@click.option("--actor", "actor_name", metavar="NAME", help="Replay those of this actor.")
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter of QUEUE.")
@broker_option
def dlq_replay(
    queue: str,
    message_ids: tuple[str, ...],
    actor_name: str | None,
    replay_all: bool,
    broker_spec: str | None,
) -> None:
    """Send dead letters back to QUEUE with their retry count reset.

    Each is published and confirmed by RabbitMQ before it is removed from QUEUE.XQ:
    a replay killed half way may run a message twice, never lose one.
    """
    if replay_all and (message_ids or actor_name):
        raise click.UsageError("--all cannot be combined with --id or --actor")
    if not (replay_all or message_ids or actor_name):
        raise click.UsageError("say which: --id ID (repeatable), --actor NAME or --all")
    broker = operator_broker(broker_spec)
    ids = list(dict.fromkeys(message_ids)) or None

    async def work() -> int:
        try:
            await _admin.dead_letter_count(broker, queue)
            return await broker.requeue_dead_letters(queue, message_ids=ids, actor_name=actor_name)
        finally:
            await broker.close()

    count = operate(work)
    click.echo(f"replayed {count} dead letter{'s' if count != 1 else ''} to {queue}")
    if ids is not None and count < len(ids):
        fail(
            f"{len(ids) - count} of the {len(ids)} ids were not found in {queue}.XQ",
            EXIT_RUNTIME_ERROR,
        )


@dlq.command("purge")
@click.argument("queue")
@click.option(
    "--older-than",
    type=DURATION,
    default=None,
    metavar="DURATION",
    help="Only those that failed longer ago than this: 7d, 12h, 30m, 45s or seconds.",
)
@click.option("--id", "message_ids", multiple=True, metavar="ID", help="Only this one (repeat).")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@broker_option
def dlq_purge(
    queue: str,
    older_than: float | None,
    message_ids: tuple[str, ...],
    yes: bool,
    broker_spec: str | None,
) -> None:
    """Delete dead letters of QUEUE for good, after a confirmation prompt.

    The prompt needs a terminal: without one on stdin, pass --yes.
    """
    if not yes and not (sys.stdin is not None and sys.stdin.isatty()):
        # Not even piped input counts as an answer: `echo y |` must not delete by accident.
        fail(
            f"not deleting the dead letters of {queue}: "
            "stdin is not a terminal: pass --yes to delete without asking",
            EXIT_RUNTIME_ERROR,
        )
    broker = operator_broker(broker_spec)
    ids = list(dict.fromkeys(message_ids)) or None

    async def work() -> int | None:
        try:
            total = await _admin.dead_letter_count(broker, queue)
            if total == 0:
                return None
            if not yes:
                question = f"Delete all {total} dead letters of {queue}?"
                if older_than is not None or ids is not None:
                    conditions = []
                    if ids is not None:
                        conditions.append(f"with the {len(ids)} ids given")
                    if older_than is not None:
                        ago = _admin_format.format_duration(older_than)
                        conditions.append(f"that failed more than {ago} ago")
                    question = (
                        f"Delete the dead letters of {queue} {' and '.join(conditions)} "
                        f"({total} in {queue}.XQ)?"
                    )
                # In a thread: the connection keeps its heartbeats while the operator reads.
                if not await asyncio.to_thread(click.confirm, question):
                    raise AdminError("nothing deleted")
            return await broker.purge_dead_letters(queue, message_ids=ids, older_than=older_than)
        finally:
            await broker.close()

    count = operate(work)
    if count is None:
        click.echo(f"no dead letters in {queue}.XQ")
    else:
        click.echo(f"deleted {count} dead letter{'s' if count != 1 else ''} of {queue}")
