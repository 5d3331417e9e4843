"""The RabbitMQ broker: a connection per role, confirms, a channel per consumed queue."""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import aiormq
from aio_pika.abc import AbstractRobustConnection

from ..._url import redact_url
from ...broker import (
    DEFAULT_MAX_MESSAGE_SIZE,
    Broker,
    Consumer,
    Delivery,
    DeliveryHandler,
    QueueInfo,
)
from ...errors import UnroutableError
from ...message import Message
from ...middleware import Middleware
from ...middleware.priorities import max_priorities, priority_of
from ...topology import QUEUE_TYPES, QueueType, delay_route
from .acker import _RabbitmqDelivery
from .connections import BOTH, CONSUME, PUBLISH, RoleConnection
from .consumer import QueueConsumer
from .dead_letter_queues import DeadLetterQueues
from .declarations import Declarations
from .events import EventStreams
from .groups import RabbitmqGroups
from .limits import RabbitmqLimits
from .publish_batches import Outgoing
from .publisher import Publisher
from .replies import DirectReplyTo
from .server import ServerVersion
from .single_queues import SingleQueues
from .urls import broker_urls, describe_urls

if TYPE_CHECKING:
    from .dramatiq_compat import DramatiqCompat

log = logging.getLogger("aqueue.brokers.rabbitmq")


class RabbitmqBroker(
    EventStreams,
    DeadLetterQueues,
    DirectReplyTo,
    SingleQueues,
    RabbitmqLimits,
    RabbitmqGroups,
    Broker,
):
    """A broker on RabbitMQ, holding a small, constant number of connections per process.

    A process that only sends holds one connection. A worker holds at most two: one that
    consumes (every queue's channel and its acks) and one that publishes (sends from
    actors, retries, delays, dead letters), because RabbitMQ blocks a publishing
    connection whole during a memory or disk alarm, and consumers must go on meanwhile.
    Each is aio-pika's robust connection, which reconnects by itself, moving on to the
    next node when several URLs are given.

    Args:
        url: ``amqp://`` or ``amqps://`` URL, several as a list or separated by commas
            (the nodes of a cluster; credentials, vhost and TLS options may differ per
            URL); default: the ``AQUEUE_BROKER_URL`` environment variable, else
            ``amqp://guest:guest@127.0.0.1:5672/``. Connection parameters such as
            ``?heartbeat=10`` go in the URL.
        shuffle_urls: Start at a random URL of the list (the default, to spread clients
            over the nodes); False tries them in the given order.
        single_connection: Publish and consume on one connection (for brokers with tight
            connection limits). Then a send from an actor during a resource alarm blocks
            that connection, and with it every consumer's acks until the alarm clears.
        connect_attempts: How many times ``connect()`` tries (moving through the URLs)
            before it raises :class:`~aqueue.BrokerConnectionError`.
        connect_retry_delay: Seconds before the next round of attempts; doubled after each.
        connect_timeout: Seconds one connection attempt (TCP, TLS and AMQP handshake) may
            take, on the first connection and on every reconnect.
        publish_timeout: How long, in seconds, ``send()`` waits for the broker's confirm,
            including waiting for a lost connection to come back, before it raises
            :class:`~aqueue.BrokerConnectionError` (:class:`~aqueue.BrokerBlockedError`
            while RabbitMQ blocks publishing).
        reconnect_interval: Seconds between reconnection attempts after a connection was lost.
        middleware: The middleware stack (default: :func:`aqueue.middleware.default_middleware`).
        queue_type: ``"classic"`` (default) or ``"quorum"``: the type of the queues this
            broker declares. Quorum queues are replicated, dead-letter at least once
            (delays and dead letters included) and count deliveries.
        queue_types: Per-queue overrides of ``queue_type``, e.g. ``{"payments": "quorum"}``.
        delivery_limit: For quorum queues, RabbitMQ dead-letters a message delivered more
            often than this (default 20, declared as ``x-delivery-limit`` so that it is the
            same on RabbitMQ 3.x and 4.x); a backstop to ``max_redeliveries``. None declares
            no limit: none on 3.x, RabbitMQ's default of 20 on 4.x.
        max_message_size: Largest message body in bytes (default 1 MiB): a larger
            ``send()`` raises :class:`~aqueue.ValidationError`, a larger delivery is
            dead-lettered.
        dramatiq_compat: Share queues with Dramatiq producers and workers: declare queues
            as Dramatiq does, write and read its millisecond durations, move its delayed
            messages out of ``<queue>.DQ`` (see the "Coming from Dramatiq" page).
        dramatiq_max_priority: Dramatiq's ``max_priority``, when its brokers set one.
        dramatiq_actors: With ``dramatiq_compat``, the queues of actors only Dramatiq has,
            by actor name (``{"notify": "emails"}``): an ``on_success`` / ``on_failure``
            naming one is published there; one not listed goes to ``"default"``.
    """

    def __init__(
        self,
        url: str | Sequence[str] | None = None,
        *,
        middleware: Iterable[Middleware] | None = None,
        queue_type: QueueType = "classic",
        queue_types: Mapping[str, QueueType] | None = None,
        delivery_limit: int | None = 20,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        shuffle_urls: bool = True,
        single_connection: bool = False,
        connect_attempts: int = 5,
        connect_retry_delay: float = 0.5,
        connect_timeout: float = 10.0,
        publish_timeout: float = 30.0,
        reconnect_interval: float = 1.0,
        dramatiq_compat: bool = False,
        dramatiq_max_priority: int | None = None,
        dramatiq_actors: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(middleware=middleware, max_message_size=max_message_size)
        self.urls = broker_urls(url)
        if connect_attempts < 1:
            raise ValueError("connect_attempts must be at least 1")
        if connect_timeout <= 0 or publish_timeout <= 0:
            raise ValueError("connect_timeout and publish_timeout must be positive")
        self.queue_types: dict[str, QueueType] = dict(queue_types or {})
        for name, kind in [("queue_type", queue_type), *self.queue_types.items()]:
            if kind not in QUEUE_TYPES:
                raise ValueError(f"{name}: queue type must be classic or quorum, not {kind!r}")
        self.queue_type = queue_type
        self.delivery_limit = delivery_limit
        self.single_connection = single_connection
        self.connect_attempts = connect_attempts
        self.connect_retry_delay = connect_retry_delay
        self.connect_timeout = connect_timeout
        self.reconnect_interval = reconnect_interval
        start = random.randrange(len(self.urls)) if shuffle_urls else 0

        def role(name: str) -> RoleConnection:
            return RoleConnection(
                name,
                self.urls,
                start=start,
                connect_attempts=connect_attempts,
                connect_retry_delay=connect_retry_delay,
                connect_timeout=connect_timeout,
                reconnect_interval=reconnect_interval,
                on_event=self._on_connection_event,
            )

        self._publishing = role(BOTH if single_connection else PUBLISH)
        self._consuming = self._publishing if single_connection else role(CONSUME)
        self._publisher = Publisher(self._publishing, timeout=publish_timeout)
        self._declarations = Declarations(
            self._channel_for_topology,
            queue_type_of=self.queue_type_of,
            delivery_limit=delivery_limit,
            timeout=publish_timeout,
            describe_node=lambda: self._control.node,
            server_version=lambda: self.server_version,
            max_priorities=lambda queue_name: max_priorities(self, queue_name),
        )
        self._consumers: list[QueueConsumer] = []
        self._dramatiq: DramatiqCompat | None = None  # set by enable_dramatiq_compat
        if dramatiq_compat:
            from .dramatiq_compat import enable_dramatiq_compat

            enable_dramatiq_compat(self, max_priority=dramatiq_max_priority, actors=dramatiq_actors)
        elif dramatiq_actors:
            raise ValueError("dramatiq_actors needs dramatiq_compat=True")

    def __repr__(self) -> str:
        return f"RabbitmqBroker({', '.join(redact_url(u) for u in self.urls)!r})"

    # -- connections ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The first broker URL (all of them are in ``urls``)."""
        return self.urls[0]

    @property
    def publish_timeout(self) -> float:
        return self._publisher.timeout

    @publish_timeout.setter
    def publish_timeout(self, value: float) -> None:
        self._publisher.timeout = value

    @property
    def connection(self) -> AbstractRobustConnection | None:
        """The publishing connection (aio-pika's robust connection), once open."""
        return self._publishing.connection

    @property
    def consuming_connection(self) -> AbstractRobustConnection | None:
        """The connection consumers use, once a queue is consumed (the publishing one
        with ``single_connection=True``)."""
        return self._consuming.connection

    @property
    def blocked(self) -> bool:
        """Whether RabbitMQ blocks the publishing connection now (a memory or disk alarm).

        Sends then wait up to ``publish_timeout`` and raise
        :class:`~aqueue.BrokerBlockedError`; consumers and their acks go on.
        """
        return self._publishing.blocked

    @property
    def blocked_reason(self) -> str | None:
        """RabbitMQ's reason for blocking the publishing connection, or None."""
        return self._publishing.blocked_reason

    @property
    def server_version(self) -> ServerVersion | None:
        """The RabbitMQ version, e.g. ``(3, 10, 8)``, read from the server properties of the
        last connect (None before the first). What depends on it (a quorum queue's default
        delivery limit, what a consumer timeout does) is in ``brokers/rabbitmq/server.py``."""
        return self._control.server_version or self._publishing.server_version

    @property
    def _control(self) -> RoleConnection:
        # Declares and inspections go on the consuming connection when there is one:
        # RabbitMQ never blocks it, so a worker can declare and subscribe during an alarm.
        return self._consuming if self._consuming.connection is not None else self._publishing

    async def connect(self) -> None:
        """Open the publishing connection (done by itself on first use); safe to call
        concurrently. The consuming connection opens when a queue is first consumed."""
        await self._publishing.channel("publish", confirms=True)
        log.debug("connected to %s", describe_urls(self.urls))

    def _on_connection_event(self, event: str) -> None:
        if event == "reconnected":
            # The node may be another one, or may have lost non-replicated state.
            self._declarations.clear()
        self._emit_connection_event(event)

    async def close(self) -> None:
        """Close every connection and channel of this broker."""
        self._consumers.clear()
        self._declarations.clear()
        if self._consuming is self._publishing:
            await self._publishing.close()
        else:
            await asyncio.gather(self._publishing.close(), self._consuming.close())

    # -- topology -------------------------------------------------------------------------

    def queue_type_of(self, queue_name: str) -> QueueType:
        """The type of ``queue_name``: its entry in ``queue_types``, else ``queue_type``."""
        return self.queue_types.get(queue_name, self.queue_type)

    async def declare_queue(self, queue_name: str) -> None:
        """Declare ``queue_name``, its dead-letter queue and its delay binding (idempotent)."""
        await self._declarations.queue(queue_name)

    async def _channel_for_topology(self) -> aiormq.abc.AbstractChannel:
        channel = await self._control.channel("topology")
        return await channel.get_underlay_channel()

    async def ready_count(self, queue_name: str) -> int:
        """The number of ready messages in ``queue_name`` (0 if it does not exist)."""
        info = await self.queue_info(queue_name)
        return 0 if info is None else info.ready

    async def queue_info(self, queue_name: str) -> QueueInfo | None:
        """Ready messages and consumers of ``queue_name``, or None if it does not exist."""
        channel = await self._control.plain_channel()
        try:
            result = await channel.queue_declare(queue_name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
        return QueueInfo(
            name=queue_name,
            ready=int(result.message_count or 0),
            consumers=int(result.consumer_count or 0),
        )

    # -- publishing -----------------------------------------------------------------------

    def _options_from_wire(self, message: Message, known: frozenset[str]) -> None:
        if self._dramatiq is not None:
            self._dramatiq.options_from_wire(message, known)

    async def _publish_message(self, message: Message, delay: float | None) -> None:
        try:
            await self._publisher.publish_item(await self._outgoing(message, delay))
        except UnroutableError:
            # The queue was deleted behind our back: declare it again and retry once.
            await self._publisher.publish_item(await self._outgoing(message, delay, again=True))

    async def _publish_messages(
        self, messages: Sequence[Message], delay: float | None
    ) -> Sequence[BaseException | None]:
        # Encoded (and so size-checked) before anything is published.
        items = [await self._outgoing(message, delay) for message in messages]
        errors: list[BaseException | None] = list(await self._publisher.publish_many(items))
        lost = [i for i, error in enumerate(errors) if isinstance(error, UnroutableError)]
        if lost:
            # Their queue was deleted behind our back: declare it again, publish them once more.
            for queue_name in {messages[i].queue_name for i in lost}:
                self._declarations.forget_queue(queue_name)
            retried = [await self._outgoing(messages[i], delay) for i in lost]
            again = await self._publisher.publish_many(retried)
            for i, error in zip(lost, again, strict=True):
                errors[i] = error
        return errors

    async def _outgoing(
        self, message: Message, delay: float | None, *, again: bool = False
    ) -> Outgoing:
        """The encoded message and its route (a delay level if delayed), its queue declared
        (``again``: declared anew, after it was found missing)."""
        body = self._encode(message)
        queue_name = message.queue_name
        if again:
            self._declarations.forget_queue(queue_name)
        await self.declare_queue(queue_name)
        delay_ms = 0 if delay is None else math.ceil(delay * 1000)
        kind = self.queue_type_of(queue_name)
        if delay_ms > 0:
            await self._declarations.delay_levels(kind)
            exchange, routing_key = delay_route(queue_name, delay_ms, kind)
        else:
            exchange, routing_key = "", queue_name
        return Outgoing(
            routing_key, body, message.message_id, exchange, priority=priority_of(self, message)
        )

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
        """Publish raw bytes, persistent and mandatory, and wait for the broker's confirm.

        While the connection is down, waits for it up to ``publish_timeout``.

        Raises:
            UnroutableError: no queue is bound for ``routing_key``.
            NackedError: the broker refused the message.
            BrokerBlockedError: RabbitMQ blocked publishing (an alarm) past ``publish_timeout``.
            BrokerConnectionError: no confirm within ``publish_timeout``.
        """
        await self._publisher.publish(
            routing_key,
            body,
            message_id=message_id,
            headers=headers,
            exchange=exchange,
            priority=priority,
        )

    # -- consuming ------------------------------------------------------------------------

    async def consume(
        self, queue_name: str, *, prefetch: int, handler: DeliveryHandler
    ) -> Consumer:
        """Consume ``queue_name`` on a channel of its own with ``basic.qos(prefetch)``."""
        connection = await self._consuming.connect()
        await self.declare_queue(queue_name)
        consumer = QueueConsumer(
            connection, queue_name, prefetch, handler, self._declarations.queue_again
        )
        await consumer.start()
        self._consumers.append(consumer)
        return consumer

    async def give_back(self, queue_name: str, delivery: Delivery) -> None:
        """Publish the delivery to ``queue_name`` again (same body, message id and headers),
        confirmed, then ack it; requeue it if that fails or could not be done at once (the
        publishing connection down, or blocked by a resource alarm)."""
        assert isinstance(delivery, _RabbitmqDelivery)
        connection = self._publishing.connection
        can_publish = connection is not None and connection.connected.is_set()
        await delivery.give_back(
            queue_name, self.publish, can_publish=can_publish and not self.blocked
        )
