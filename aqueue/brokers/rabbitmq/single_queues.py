"""The RabbitMQ broker's single-active-consumer and keep-latest queues (the scheduler's)."""

from __future__ import annotations

import aiormq

from ...broker import Consumer, DeliveryHandler
from .broker_parts import BrokerParts
from .consumer import QueueConsumer
from .single import (
    LATEST_ONLY_ARGUMENTS,
    SINGLE_PREFETCH,
    declare_single_queue,
    peek,
    publish_declared,
)


class SingleQueues(BrokerParts):
    """The single-queue methods of :class:`~aqueue.RabbitmqBroker`."""

    async def consume_single(self, queue_name: str, *, handler: DeliveryHandler) -> Consumer:
        """:meth:`Broker.consume_single`, declared with ``x-single-active-consumer``."""
        connection = await self._consuming.connect()
        await self._declare_single(queue_name)
        consumer = QueueConsumer(
            connection, queue_name, SINGLE_PREFETCH, handler, self._declare_single
        )
        await consumer.start()
        self._consumers.append(consumer)
        return consumer

    async def _declare_single(self, queue_name: str) -> None:
        channel = await self._channel_for_topology()
        await declare_single_queue(channel, queue_name, self.queue_type_of(queue_name))

    async def publish_single(self, queue_name: str, body: bytes, *, message_id: str) -> None:
        """:meth:`Broker.publish_single` (declaring the queue again if it was deleted)."""
        await publish_declared(
            lambda: self.publish(queue_name, body, message_id=message_id),
            lambda: self._declare_single(queue_name),
        )

    async def publish_latest(self, queue_name: str, body: bytes) -> None:
        """:meth:`Broker.publish_latest`: a classic queue with ``x-max-length`` 1."""

        async def declare() -> None:
            channel = await self._channel_for_topology()
            await channel.queue_declare(queue_name, durable=True, arguments=LATEST_ONLY_ARGUMENTS)

        # Declared only when the publish finds no queue (mandatory): not once per renewal.
        await publish_declared(
            lambda: self.publish(queue_name, body, message_id=queue_name), declare
        )

    async def peek_latest(self, queue_name: str) -> bytes | None:
        """:meth:`Broker.peek_latest`."""
        try:
            async with self._control.temporary_channel() as channel:
                return await peek(channel, queue_name)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
