"""The RabbitMQ broker's dead-letter queues: dead-lettering a delivery, reading, replaying
and purging ``<queue>.XQ``."""

from __future__ import annotations

import time
from collections.abc import Iterable

from ...broker import Delivery
from ...dead_letters import DeadLetter, body_message_id, dead_letter_filter, replay_message
from ...topology import dead_letter_queue_name
from .acker import _RabbitmqDelivery
from .broker_parts import BrokerParts
from .dead_letters import read_dead_letters, take_dead_letters


class DeadLetterQueues(BrokerParts):
    """The dead-letter methods of :class:`~aqueue.RabbitmqBroker`."""

    async def dead_letter(
        self, queue_name: str, delivery: Delivery, reason: dict[str, str]
    ) -> None:
        """Publish the delivery's body to ``<queue>.XQ`` with its own headers and the
        ``reason`` headers, then ack it.

        The message id is the AMQP property, else the body's ``message_id`` (Dramatiq sets
        no AMQP id), else a made-up ``undecodable-...`` one.
        """
        assert isinstance(delivery, _RabbitmqDelivery)
        dlq = dead_letter_queue_name(queue_name)
        await self.declare_queue(queue_name)
        message_id = (
            delivery.message_id or body_message_id(delivery.body) or f"undecodable-{time.time_ns()}"
        )
        headers = {**delivery.headers, **reason}
        await self.publish(dlq, delivery.body, message_id=message_id, headers=headers)
        await delivery.ack()

    async def dead_letters(self, queue_name: str, *, limit: int = 100) -> list[DeadLetter]:
        """Read up to ``limit`` dead letters of ``queue_name``; they stay in ``<queue>.XQ``."""
        async with self._control.temporary_channel() as channel:
            return await read_dead_letters(channel, queue_name, limit)

    async def requeue_dead_letters(
        self,
        queue_name: str,
        *,
        message_ids: Iterable[str] | None = None,
        actor_name: str | None = None,
        limit: int | None = None,
    ) -> int:
        """Send dead letters back to ``queue_name`` with their retry count reset; each is
        republished and confirmed before it leaves ``<queue>.XQ`` (a crash half way
        duplicates at worst). Dead letters that are not aqueue messages stay."""
        await self.declare_queue(queue_name)
        select = dead_letter_filter(message_ids=message_ids, actor_name=actor_name)

        async def requeue(letter: DeadLetter) -> None:
            await self._publish_message(replay_message(letter, queue_name), None)

        async with self._control.temporary_channel() as channel:
            return await take_dead_letters(channel, queue_name, select, requeue, limit)

    async def purge_dead_letters(
        self,
        queue_name: str,
        *,
        message_ids: Iterable[str] | None = None,
        older_than: float | None = None,
    ) -> int:
        """Delete dead letters of ``queue_name`` (those failed ``older_than`` seconds ago)."""
        select = dead_letter_filter(message_ids=message_ids, older_than=older_than)

        async with self._control.temporary_channel() as channel:
            return await take_dead_letters(channel, queue_name, select, _drop, None)


async def _drop(letter: DeadLetter) -> None:
    """What a purge does with each dead letter it takes: nothing."""
