"""Reading and taking dead letters from ``<queue>.XQ`` with ``basic.get``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiormq
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from ...dead_letters import DeadLetter, body_message_id
from ...errors import MessageDecodeError
from ...topology import dead_letter_queue_name


async def read_dead_letters(
    channel: aiormq.abc.AbstractChannel, queue_name: str, limit: int
) -> list[DeadLetter]:
    """Up to ``limit`` dead letters of ``queue_name``, left unacked: closing ``channel``
    returns them all, in their order, to the queue."""
    letters: list[DeadLetter] = []
    while len(letters) < limit:
        got = await channel.basic_get(dead_letter_queue_name(queue_name), no_ack=False)
        if not isinstance(got.delivery, Basic.GetOk):
            break
        letters.append(dead_letter_of(got))
    return letters


async def take_dead_letters(
    channel: aiormq.abc.AbstractChannel,
    queue_name: str,
    select: Callable[[DeadLetter], bool],
    handle: Callable[[DeadLetter], Awaitable[None]],
    limit: int | None,
) -> int:
    """Ack each selected dead letter after ``handle`` succeeded; leave the others.

    Those not taken stay unacked until ``channel`` closes, then go back to the queue.
    """
    taken = 0
    while limit is None or taken < limit:
        got = await channel.basic_get(dead_letter_queue_name(queue_name), no_ack=False)
        if not isinstance(got.delivery, Basic.GetOk):
            break
        letter = dead_letter_of(got)
        if not select(letter):
            continue
        try:
            await handle(letter)
        except MessageDecodeError:
            continue  # not an aqueue message: left where it is
        await channel.basic_ack(got.delivery.delivery_tag)  # type: ignore[arg-type]
        taken += 1
    return taken


def dead_letter_of(got: DeliveredMessage) -> DeadLetter:
    properties = got.header.properties
    return DeadLetter(
        body=got.body,
        headers=dict(properties.headers or {}),
        # Dramatiq sets no AMQP message id, and RabbitMQ dead-letters its nacks as they are.
        message_id=properties.message_id or body_message_id(got.body),
    )
