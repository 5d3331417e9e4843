"""What the mixins of :class:`~aqueue.RabbitmqBroker` use of the broker: declared once.

The broker is put together from mixins, one per feature (dead letters, event streams,
single-active-consumer queues, limits, groups, Direct Reply-To); each reaches the
connections, the confirmed publish and the topology channel through this class.
"""

from __future__ import annotations

import abc
from typing import Any

import aiormq

from ...message import Message
from ...topology import QueueType
from .connections import RoleConnection
from .consumer import QueueConsumer

__all__ = ["BrokerParts"]


class BrokerParts(abc.ABC):
    """The parts of :class:`~aqueue.RabbitmqBroker` its feature mixins build on."""

    _publishing: RoleConnection
    _consuming: RoleConnection
    _consumers: list[QueueConsumer]
    publish_timeout: float

    @property
    @abc.abstractmethod
    def _control(self) -> RoleConnection:
        """The connection for topology and reads: the consuming one once open."""

    @abc.abstractmethod
    async def _channel_for_topology(self) -> aiormq.abc.AbstractChannel:
        """A channel for declarations, reopened when it closed."""

    @abc.abstractmethod
    def queue_type_of(self, queue_name: str) -> QueueType:
        """The type ``queue_name`` is declared with."""

    @abc.abstractmethod
    async def declare_queue(self, queue_name: str) -> None:
        """Declare a work queue and its dead-letter queue (once per broker)."""

    @abc.abstractmethod
    async def _publish_message(self, message: Message, delay: float | None) -> None:
        """Publish an encoded message, delayed through the delay levels if asked."""

    @abc.abstractmethod
    async def publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        message_id: str,
        headers: dict[str, Any] | None = None,
        exchange: str = "",
        priority: int | None = None,
    ) -> None:
        """Publish raw bytes, persistent and mandatory, and wait for the confirm."""
