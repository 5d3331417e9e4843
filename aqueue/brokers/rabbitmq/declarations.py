"""Declaring queues and the delay levels once, even under concurrent first sends.

Everything declared here passes RabbitMQ 4.3's rules (durable, no ``x-queue-mode``, no
``x-queue-version``, no ``x-consumer-timeout``): see ``server.refused_by_rabbitmq_4_3``
and the table in docs/deployment.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aiormq

from ...errors import BrokerConnectionError, BrokerError
from ...topology import (
    DELAY_LEVELS,
    DELIVERY_EXCHANGE,
    QueueType,
    dead_letter_queue_arguments,
    dead_letter_queue_name,
    delay_level_arguments,
    delay_level_bindings,
    delay_level_name,
    delivery_binding_key,
    queue_arguments,
)
from .errors import CONNECTION_ERRORS, describe_error
from .server import ServerVersion, default_delivery_limit, format_version

log = logging.getLogger("aqueue.brokers.rabbitmq")

_DELAYS = "aqueue.delay."  # key prefix in Declarations._done; no queue has such a name


class Declarations:
    """What this process declared on RabbitMQ, so that each thing is declared once.

    Forgotten after a reconnect (the new node may lack non-replicated state) and after
    a publish was returned as unroutable (a queue deleted behind our back).
    """

    def __init__(
        self,
        channel: Callable[[], Awaitable[aiormq.abc.AbstractChannel]],
        *,
        queue_type_of: Callable[[str], QueueType],
        delivery_limit: int | None,
        timeout: float,
        describe_node: Callable[[], str],
        server_version: Callable[[], ServerVersion | None] = lambda: None,
    ) -> None:
        self._channel = channel
        self._queue_type_of = queue_type_of
        self._delivery_limit = delivery_limit
        self._timeout = timeout
        self._describe_node = describe_node
        self._server_version = server_version
        self._told_default_limit = False
        # Declarations done or under way, shared so that concurrent first sends declare once.
        self._done: dict[str, asyncio.Future[None]] = {}

    def clear(self) -> None:
        """Declare everything again on next use."""
        self._done.clear()

    def forget_queue(self, queue_name: str) -> None:
        """Declare ``queue_name`` (and its delay levels) again on next use."""
        self._done.pop(queue_name, None)
        self._done.pop(_DELAYS + self._queue_type_of(queue_name), None)

    async def queue(self, queue_name: str) -> None:
        """Declare ``queue_name``, its dead-letter queue and its delivery binding, once."""
        await self._once(queue_name, lambda: self._declare_queue(queue_name))

    async def queue_again(self, queue_name: str) -> None:
        """Declare ``queue_name`` even if this process declared it before."""
        self._done.pop(queue_name, None)
        await self.queue(queue_name)

    async def delay_levels(self, queue_type: QueueType) -> None:
        """Declare the shared delay levels of ``queue_type``, once."""
        await self._once(_DELAYS + queue_type, lambda: self._declare_delay_levels(queue_type))

    async def _once(self, key: str, declare: Callable[[], Awaitable[None]]) -> None:
        done = self._done.get(key)
        if done is None:
            done = asyncio.ensure_future(declare())
            self._done[key] = done

            def forget_failure(future: asyncio.Future[None]) -> None:
                if (future.cancelled() or future.exception()) and self._done.get(key) is future:
                    del self._done[key]

            done.add_done_callback(forget_failure)
        elif done.done() and not done.cancelled() and done.exception() is None:
            return
        try:
            # Bounded like a publish: while the connection is down this waits for it.
            await asyncio.wait_for(asyncio.shield(done), self._timeout)
        except asyncio.TimeoutError:
            raise BrokerConnectionError(
                f"RabbitMQ at {self._describe_node()} did not answer within "
                f"{self._timeout} s while declaring {key!r}"
            ) from None
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise BrokerError(
                f"RabbitMQ refused to declare {key!r} as aqueue does (it exists with other "
                f"arguments, e.g. another queue type): {exc}"
            ) from None
        except CONNECTION_ERRORS as exc:
            raise BrokerConnectionError(
                f"lost RabbitMQ at {self._describe_node()} while declaring {key!r}: "
                f"{describe_error(exc)}"
            ) from None

    async def _declare_queue(self, queue_name: str) -> None:
        channel = await self._channel()
        kind = self._queue_type_of(queue_name)
        arguments = queue_arguments(queue_name, kind, delivery_limit=self._delivery_limit)
        if kind == "quorum" and self._delivery_limit is None:
            self._tell_default_limit(queue_name)
        # One answer at a time, so that a clash (a queue that exists with other arguments)
        # is reported as such.
        await channel.queue_declare(
            dead_letter_queue_name(queue_name),
            durable=True,
            arguments=dead_letter_queue_arguments(kind),
        )
        await channel.exchange_declare(DELIVERY_EXCHANGE, exchange_type="topic", durable=True)
        await channel.queue_declare(queue_name, durable=True, arguments=arguments)
        await channel.queue_bind(
            queue_name, DELIVERY_EXCHANGE, routing_key=delivery_binding_key(queue_name)
        )

    def _tell_default_limit(self, queue_name: str) -> None:
        # delivery_limit=None declares no x-delivery-limit: what that means is the server's.
        version = self._server_version()
        limit = default_delivery_limit(version)
        if limit is None or self._told_default_limit:
            return
        self._told_default_limit = True
        log.info(
            "quorum queue %s is declared without a delivery limit (delivery_limit=None): "
            "RabbitMQ %s applies its default of %d deliveries, then dead-letters the message",
            queue_name,
            format_version(version),
            limit,
        )

    async def _declare_delay_levels(self, queue_type: QueueType) -> None:
        channel = await self._channel()
        # Pipelined: commands on a channel run in order, and a failing one closes the
        # channel, so the last (waited-for) answer vouches for all of them.
        await channel.exchange_declare(
            DELIVERY_EXCHANGE, exchange_type="topic", durable=True, nowait=True
        )
        for level in range(DELAY_LEVELS):
            name = delay_level_name(level, queue_type)
            lower = delay_level_name(level - 1, queue_type) if level else DELIVERY_EXCHANGE
            to_queue, to_lower = delay_level_bindings(level)
            await channel.exchange_declare(name, exchange_type="topic", durable=True, nowait=True)
            await channel.queue_declare(
                name, durable=True, arguments=delay_level_arguments(level, queue_type), nowait=True
            )
            await channel.queue_bind(name, name, routing_key=to_queue, nowait=True)
            await channel.exchange_bind(lower, name, routing_key=to_lower, nowait=True)
        await channel.queue_declare(delay_level_name(DELAY_LEVELS - 1, queue_type), passive=True)
