"""Moving Dramatiq's delayed messages out of ``<q>.DQ``.

Dramatiq publishes a delayed message, and every retry, to ``<q>.DQ`` with its due time
in the ``eta`` option (milliseconds since the epoch); a Dramatiq worker holds it in
memory until then. A compat aqueue worker consumes ``<q>.DQ`` too and, for each message,
publishes it to ``<q>`` (due already) or into aqueue's delay levels for the time left
(due later), confirmed, then acks it: no worker holds it, and a crash in between
duplicates it at worst. ``eta`` is removed on the way, as Dramatiq does, so a Dramatiq
worker that takes the message from ``<q>`` runs it at once. The other options are moved
as they are, in the wire's terms (milliseconds, Dramatiq's None for "unset"): whichever
worker takes the message from ``<q>`` reads them in its own (an aqueue worker through its
broker's ``_options_from_wire``, before it validates them).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import TYPE_CHECKING

import msgspec

from ..._failures import UNDECODABLE, failure_headers
from ...broker import Consumer, Delivery
from ...errors import MessageDecodeError
from ...message import Message
from ...topology import MAX_DELAY_SECONDS, dramatiq_delay_queue_name

if TYPE_CHECKING:
    from .broker import RabbitmqBroker

__all__ = ["DramatiqDelays", "due_in"]

log = logging.getLogger("aqueue.brokers.rabbitmq")

#: Messages of one ``.DQ`` moved at a time (each is one confirmed publish).
PREFETCH = 100


def due_in(message: Message, now: float | None = None) -> float | None:
    """Seconds until ``message``'s ``eta``; None if it is due (or has no valid ``eta``)."""
    eta = message.options.get("eta")
    if not isinstance(eta, (int, float)) or isinstance(eta, bool):
        return None
    left = eta / 1000 - (time.time() if now is None else now)
    return min(left, MAX_DELAY_SECONDS) if left >= 0.001 else None


class DramatiqDelays:
    """The ``.DQ`` consumers of one worker."""

    def __init__(self, broker: RabbitmqBroker) -> None:
        self.broker = broker
        self._consumers: list[Consumer] = []
        self.moved = 0

    async def start(self, queue_names: list[str]) -> None:
        """Consume the ``.DQ`` of each of ``queue_names``."""
        for name in queue_names:
            consumer = await self.broker.consume(
                dramatiq_delay_queue_name(name),
                prefetch=PREFETCH,
                handler=functools.partial(self._move, name),
            )
            self._consumers.append(consumer)

    async def stop(self) -> None:
        """Stop consuming; what was not moved stays in ``.DQ``."""
        consumers, self._consumers = self._consumers, []
        for consumer in consumers:
            await consumer.cancel()
        for consumer in consumers:
            await consumer.close()

    async def _move(self, queue_name: str, delivery: Delivery) -> None:
        try:
            message = Message.decode(delivery.body)
        except MessageDecodeError as exc:
            headers = failure_headers(UNDECODABLE, exc, queue_name=queue_name, actor_name=None)
            await self.broker.dead_letter(queue_name, delivery, headers)
            return
        delay = due_in(message)
        options = {k: v for k, v in message.options.items() if k != "eta"}
        moved = msgspec.structs.replace(message, queue_name=queue_name, options=options)
        try:
            # Not enqueue(): the options are on the wire already, in the wire's units.
            await self.broker._publish_message(moved, delay)
        except Exception as exc:
            log.warning(
                "could not move message %s from %s (%s); requeueing it",
                message.message_id,
                dramatiq_delay_queue_name(queue_name),
                exc,
            )
            await asyncio.sleep(1.0)
            await delivery.requeue()
            return
        await delivery.ack()
        self.moved += 1
        log.debug(
            "moved message %s from %s to %s%s",
            message.message_id,
            dramatiq_delay_queue_name(queue_name),
            queue_name,
            "" if delay is None else f" in {delay:.3f} s",
        )
