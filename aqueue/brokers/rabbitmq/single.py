"""Queues with a single active consumer, which the scheduler's leases live in.

RabbitMQ delivers the messages of such a queue to one of its consumers at a time, and
to the next one when that one goes (its channel or connection closed), unacknowledged
messages included: whoever holds the lease message is the one active scheduler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiormq
from pamqp.commands import Basic

from ...errors import UnroutableError
from ...topology import QueueType

#: How many lease messages the active consumer may hold: more than one only after a
#: takeover raced, and the scheduler merges them.
SINGLE_PREFETCH = 10


def single_queue_arguments(queue_type: QueueType) -> dict[str, Any]:
    """Arguments of a single-active-consumer queue of ``queue_type`` (4.3-safe: durable)."""
    arguments: dict[str, Any] = {"x-single-active-consumer": True}
    if queue_type == "quorum":
        arguments["x-queue-type"] = "quorum"
    return arguments


async def declare_single_queue(
    channel: aiormq.abc.AbstractChannel, queue_name: str, queue_type: QueueType
) -> None:
    await channel.queue_declare(
        queue_name, durable=True, arguments=single_queue_arguments(queue_type)
    )


#: A queue that keeps only its latest message (drop-head).
LATEST_ONLY_ARGUMENTS: dict[str, Any] = {"x-max-length": 1}


async def peek(channel: aiormq.abc.AbstractChannel, queue_name: str) -> bytes | None:
    """The first message of ``queue_name``, left unacked (closing the channel returns it)."""
    got = await channel.basic_get(queue_name, no_ack=False)
    return got.body if isinstance(got.delivery, Basic.GetOk) else None


async def publish_declared(
    publish: Callable[[], Awaitable[None]], declare: Callable[[], Awaitable[None]]
) -> None:
    """``publish``; if no queue took it (deleted behind our back), ``declare`` and again."""
    try:
        await publish()
    except UnroutableError:
        await declare()
        await publish()
