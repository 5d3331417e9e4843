"""The RabbitMQ broker: one robust aio-pika connection per process, a channel per queue."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from .._url import describe_url, redact_url
from ..broker import (
    DEFAULT_MAX_MESSAGE_SIZE,
    Broker,
    Consumer,
    Delivery,
    DeliveryHandler,
    QueueInfo,
)
from ..dead_letters import DeadLetter, dead_letter_filter, replay_message
from ..errors import (
    BrokerConnectionError,
    BrokerError,
    MessageDecodeError,
    NackedError,
    UnroutableError,
)
from ..message import Message
from ..middleware import Middleware
from ..topology import (
    DELAY_LEVELS,
    DELIVERY_EXCHANGE,
    QUEUE_TYPES,
    QueueType,
    dead_letter_queue_arguments,
    dead_letter_queue_name,
    delay_level_arguments,
    delay_level_bindings,
    delay_level_name,
    delay_route,
    delivery_binding_key,
    queue_arguments,
)

__all__ = ["DEFAULT_URL", "RabbitmqBroker"]

log = logging.getLogger(__name__)

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
URL_ENVIRONMENT_VARIABLE = "AQUEUE_BROKER_URL"

# Errors that mean "the connection or channel is gone, wait for it to come back".
_CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,
    ConnectionError,
    OSError,
)
_CONNECTION_ERRORS_OR_TIMEOUT: tuple[type[Exception], ...] = (
    *_CONNECTION_ERRORS,
    asyncio.TimeoutError,
)


_DELAYS = "aqueue.delay."  # key prefix in RabbitMQBroker._declared; no queue has such a name


class RabbitmqBroker(Broker):
    """A broker on RabbitMQ, holding exactly one AMQP connection per process.

    The connection (aio-pika's robust connection, which reconnects by itself) is
    shared by publishing and by every consumer. Publishing goes through one channel
    in confirm mode; each consumed queue gets a channel of its own.

    Args:
        url: ``amqp://`` or ``amqps://`` URL; default: the ``AQUEUE_BROKER_URL``
            environment variable, else ``amqp://guest:guest@127.0.0.1:5672/``.
            Connection parameters such as ``?heartbeat=10`` go in the URL.
        connect_attempts: How many times ``connect()`` tries before it raises
            :class:`~aqueue.BrokerConnectionError`.
        connect_retry_delay: Seconds before the first retry; doubled after each.
        publish_timeout: How long, in seconds, ``send()`` waits for the broker's
            confirm, including waiting for a lost connection to come back, before it
            raises :class:`~aqueue.BrokerConnectionError`.
        reconnect_interval: Seconds between reconnection attempts after the
            connection was lost.
        middleware: The middleware stack (default: :func:`aqueue.middleware.default_middleware`).
        queue_type: ``"classic"`` (default) or ``"quorum"``: the type of the queues this
            broker declares. Quorum queues are replicated, dead-letter at least once
            (delays and dead letters included) and count deliveries.
        queue_types: Per-queue overrides of ``queue_type``, e.g. ``{"payments": "quorum"}``.
        delivery_limit: For quorum queues, RabbitMQ dead-letters a message delivered more
            often than this (default 20); a backstop to ``max_redeliveries``.
        max_message_size: Largest message body in bytes (default 1 MiB): a larger
            ``send()`` raises :class:`~aqueue.ValidationError`, a larger delivery is
            dead-lettered.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        middleware: Iterable[Middleware] | None = None,
        queue_type: QueueType = "classic",
        queue_types: Mapping[str, QueueType] | None = None,
        delivery_limit: int | None = 20,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        connect_attempts: int = 5,
        connect_retry_delay: float = 0.5,
        publish_timeout: float = 30.0,
        reconnect_interval: float = 1.0,
    ) -> None:
        super().__init__(middleware=middleware, max_message_size=max_message_size)
        self.url = url or os.environ.get(URL_ENVIRONMENT_VARIABLE) or DEFAULT_URL
        describe_url(self.url)  # validates, with an error that never shows the password
        if connect_attempts < 1:
            raise ValueError("connect_attempts must be at least 1")
        self.queue_types: dict[str, QueueType] = dict(queue_types or {})
        for name, kind in [("queue_type", queue_type), *self.queue_types.items()]:
            if kind not in QUEUE_TYPES:
                raise ValueError(f"{name}: queue type must be classic or quorum, not {kind!r}")
        self.queue_type = queue_type
        self.delivery_limit = delivery_limit
        self.connect_attempts = connect_attempts
        self.connect_retry_delay = connect_retry_delay
        self.publish_timeout = publish_timeout
        self.reconnect_interval = reconnect_interval
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractRobustChannel | None = None
        self._topology_channel: AbstractRobustChannel | None = None
        self._inspect_channel: aiormq.abc.AbstractChannel | None = None
        self._connect_lock: asyncio.Lock | None = None
        # Declarations done or under way, by queue name (and _DELAYS for the delay levels),
        # shared so that concurrent first sends declare once.
        self._declared: dict[str, asyncio.Future[None]] = {}

    def __repr__(self) -> str:
        return f"RabbitmqBroker({redact_url(self.url)!r})"

    # -- connection -----------------------------------------------------------------------

    @property
    def connection(self) -> AbstractRobustConnection | None:
        """The process's single aio-pika connection, once connected."""
        return self._connection

    async def connect(self) -> None:
        """Connect, retrying up to ``connect_attempts`` times; safe to call concurrently."""
        if self._publish_channel is not None:
            return
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self._publish_channel is not None:
                return
            connection = await self._open_connection()
            try:
                publish_channel = connection.channel(publisher_confirms=True, on_return_raises=True)
                await publish_channel.initialize()
                topology_channel = connection.channel(publisher_confirms=False)
                await topology_channel.initialize()
            except BaseException:
                await connection.close()
                raise
            connection.reconnect_callbacks.add(self._on_reconnect)
            self._connection = connection
            self._topology_channel = topology_channel
            self._publish_channel = publish_channel  # set last: it marks "connected"
            log.debug("connected to %s", redact_url(self.url))

    async def _open_connection(self) -> AbstractRobustConnection:
        delay = self.connect_retry_delay
        started = time.monotonic()
        for attempt in range(1, self.connect_attempts + 1):
            try:
                return await aio_pika.connect_robust(
                    self.url,
                    reconnect_interval=self.reconnect_interval,
                    client_properties={
                        "connection_name": f"aqueue {socket.gethostname()} pid {os.getpid()}"
                    },
                )
            except (
                aiormq.exceptions.AuthenticationError,
                aiormq.exceptions.ProbableAuthenticationError,
            ) as exc:
                raise BrokerConnectionError(
                    f"RabbitMQ at {describe_url(self.url)} refused the credentials: {exc}"
                ) from None
            except _CONNECTION_ERRORS_OR_TIMEOUT as exc:
                reason = _describe_error(exc)
                if attempt == self.connect_attempts:
                    raise BrokerConnectionError(
                        f"cannot connect to RabbitMQ at {describe_url(self.url)} "
                        f"({attempt} attempts in {time.monotonic() - started:.1f} s): {reason}"
                    ) from None
                log.warning(
                    "cannot connect to RabbitMQ at %s (attempt %d of %d): %s; retrying in %.1f s",
                    describe_url(self.url),
                    attempt,
                    self.connect_attempts,
                    reason,
                    delay,
                )
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _on_reconnect(self, *_: Any) -> None:
        # The node may have lost non-replicated state: declare again on next use.
        log.warning("reconnected to RabbitMQ at %s", describe_url(self.url))
        self._declared.clear()

    async def close(self) -> None:
        """Close the connection and every channel on it."""
        connection, self._connection = self._connection, None
        self._publish_channel = None
        self._topology_channel = None
        self._inspect_channel = None
        self._declared.clear()
        if connection is not None:
            await connection.close()

    # -- topology -------------------------------------------------------------------------

    async def _declare_once(self, key: str, declare: Callable[[], Awaitable[None]]) -> None:
        done = self._declared.get(key)
        if done is None:
            done = asyncio.ensure_future(declare())
            self._declared[key] = done

            def forget_failure(future: asyncio.Future[None]) -> None:
                if (future.cancelled() or future.exception()) and self._declared.get(key) is future:
                    del self._declared[key]

            done.add_done_callback(forget_failure)
        elif done.done() and not done.cancelled() and done.exception() is None:
            return
        try:
            # Bounded like a publish: while the connection is down this waits for it.
            await asyncio.wait_for(asyncio.shield(done), self.publish_timeout)
        except asyncio.TimeoutError:
            raise BrokerConnectionError(
                f"RabbitMQ at {describe_url(self.url)} did not answer within "
                f"{self.publish_timeout} s while declaring {key!r}"
            ) from None
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise BrokerError(
                f"RabbitMQ refused to declare {key!r} as aqueue does (it exists with other "
                f"arguments, e.g. another queue type): {exc}"
            ) from None
        except _CONNECTION_ERRORS as exc:
            raise BrokerConnectionError(
                f"lost RabbitMQ at {describe_url(self.url)} while declaring {key!r}: "
                f"{_describe_error(exc)}"
            ) from None

    async def _redeclare_queue(self, queue_name: str) -> None:
        """Declare ``queue_name`` again, even if this process declared it before."""
        self._declared.pop(queue_name, None)
        await self.declare_queue(queue_name)

    def queue_type_of(self, queue_name: str) -> QueueType:
        """The type of ``queue_name``: its entry in ``queue_types``, else ``queue_type``."""
        return self.queue_types.get(queue_name, self.queue_type)

    async def declare_queue(self, queue_name: str) -> None:
        """Declare ``queue_name``, its dead-letter queue and its delay binding (idempotent)."""
        await self._declare_once(queue_name, lambda: self._declare_queue(queue_name))

    async def _declare_queue(self, queue_name: str) -> None:
        channel = await self._channel_for_topology()
        kind = self.queue_type_of(queue_name)
        arguments = queue_arguments(queue_name, kind, delivery_limit=self.delivery_limit)
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

    async def _declare_delays(self, queue_type: QueueType) -> None:
        """Declare the shared delay levels of ``queue_type``, once per connection."""
        await self._declare_once(
            _DELAYS + queue_type, lambda: self._declare_delay_levels(queue_type)
        )

    async def _declare_delay_levels(self, queue_type: QueueType) -> None:
        channel = await self._channel_for_topology()
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

    async def _channel_for_topology(self) -> aiormq.abc.AbstractChannel:
        await self.connect()
        assert self._topology_channel is not None
        return await self._topology_channel.get_underlay_channel()

    async def ready_count(self, queue_name: str) -> int:
        """The number of ready messages in ``queue_name`` (0 if it does not exist)."""
        info = await self.queue_info(queue_name)
        return 0 if info is None else info.ready

    async def _inspection_channel(self) -> aiormq.abc.AbstractChannel:
        """A plain channel for passive declares: a missing queue closes it, and only it."""
        channel = self._inspect_channel
        if channel is None or channel.is_closed:
            await self.connect()
            assert self._connection is not None
            await self._connection.ready()
            transport = self._connection.transport
            assert transport is not None
            channel = self._inspect_channel = await transport.connection.channel(
                publisher_confirms=False
            )
        return channel

    # -- publishing -----------------------------------------------------------------------

    async def _publish_message(self, message: Message, delay: float | None) -> None:
        body = self._encode(message)
        queue_name = message.queue_name
        await self.declare_queue(queue_name)
        delay_ms = 0 if delay is None else math.ceil(delay * 1000)
        kind = self.queue_type_of(queue_name)
        if delay_ms > 0:
            await self._declare_delays(kind)
            exchange, routing_key = delay_route(queue_name, delay_ms, kind)
        else:
            exchange, routing_key = "", queue_name
        try:
            await self.publish(routing_key, body, message_id=message.message_id, exchange=exchange)
        except UnroutableError:
            # The queue was deleted behind our back: declare it again and retry once.
            self._declared.pop(queue_name, None)
            self._declared.pop(_DELAYS + kind, None)
            await self.declare_queue(queue_name)
            if delay_ms > 0:
                await self._declare_delays(kind)
            await self.publish(routing_key, body, message_id=message.message_id, exchange=exchange)

    async def publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        message_id: str,
        headers: dict[str, Any] | None = None,
        exchange: str = "",
    ) -> None:
        """Publish raw bytes, persistent and mandatory, and wait for the broker's confirm.

        While the connection is down, waits for it up to ``publish_timeout``.

        Raises:
            UnroutableError: no queue is bound for ``routing_key``.
            NackedError: the broker refused the message.
            BrokerConnectionError: no confirm within ``publish_timeout``.
        """
        properties = Basic.Properties(
            delivery_mode=2,
            content_type="application/json",
            message_id=message_id,
            headers=headers,
        )
        deadline = time.monotonic() + self.publish_timeout
        waiting = False
        while True:
            if self._publish_channel is None:
                await self.connect()
            channel = self._publish_channel
            assert channel is not None
            remaining = deadline - time.monotonic()
            try:
                connection = self._connection
                if waiting or connection is None or not connection.connected.is_set():
                    # Only while reconnecting does getting the channel need a time limit.
                    waiting = True
                    underlay = await asyncio.wait_for(channel.get_underlay_channel(), remaining)
                else:
                    underlay = await channel.get_underlay_channel()
                # wait=False: the confirm is what we wait for; waiting for the socket to
                # drain too would hold the channel's lock and serialise concurrent sends.
                await underlay.basic_publish(  # type: ignore[call-arg]
                    body,
                    exchange=exchange,
                    routing_key=routing_key,
                    properties=properties,
                    mandatory=True,
                    timeout=remaining,
                    wait=False,
                )
                return
            except aiormq.exceptions.ChannelNotFoundEntity:
                raise UnroutableError(
                    f"RabbitMQ has no exchange {exchange!r} for message {message_id}"
                ) from None
            except aiormq.exceptions.PublishError:
                raise UnroutableError(
                    f"RabbitMQ returned message {message_id}: no queue is bound for "
                    f"routing key {routing_key!r} on exchange {exchange!r}"
                ) from None
            except aiormq.exceptions.DeliveryError as exc:
                raise NackedError(f"RabbitMQ refused message {message_id}: {exc}") from None
            except _CONNECTION_ERRORS_OR_TIMEOUT as exc:
                if time.monotonic() >= deadline or isinstance(exc, asyncio.TimeoutError):
                    raise BrokerConnectionError(
                        f"RabbitMQ at {describe_url(self.url)} did not confirm message "
                        f"{message_id} within {self.publish_timeout} s "
                        f"({_describe_error(exc)}); it may or may not have been queued"
                    ) from None
                log.debug(
                    "publish of %s interrupted (%r); waiting for the connection", message_id, exc
                )
                waiting = True
                await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    # -- consuming ------------------------------------------------------------------------

    async def consume(
        self, queue_name: str, *, prefetch: int, handler: DeliveryHandler
    ) -> Consumer:
        """Consume ``queue_name`` on a channel of its own with ``basic.qos(prefetch)``."""
        await self.declare_queue(queue_name)
        assert self._connection is not None
        consumer = _QueueConsumer(
            self._connection, queue_name, prefetch, handler, self._redeclare_queue
        )
        await consumer.start()
        return consumer

    async def dead_letter(
        self, queue_name: str, delivery: Delivery, reason: dict[str, str]
    ) -> None:
        """Publish the delivery's body to ``<queue>.XQ`` with ``reason`` headers, then ack it."""
        assert isinstance(delivery, _RabbitmqDelivery)
        dlq = dead_letter_queue_name(queue_name)
        await self.declare_queue(queue_name)
        message_id = delivery.message_id or f"undecodable-{time.time_ns()}"
        await self.publish(dlq, delivery.body, message_id=message_id, headers=reason)
        await delivery.ack()

    async def dead_letters(self, queue_name: str, *, limit: int = 100) -> list[DeadLetter]:
        """Read up to ``limit`` dead letters of ``queue_name``; they stay in ``<queue>.XQ``."""
        async with self._temporary_channel() as channel:
            letters: list[DeadLetter] = []
            while len(letters) < limit:
                got = await channel.basic_get(dead_letter_queue_name(queue_name), no_ack=False)
                if not isinstance(got.delivery, Basic.GetOk):
                    break
                letters.append(_dead_letter_of(got))
            # Closing the channel returns them all, in their order, to the queue.
            return letters

    async def requeue_dead_letters(
        self,
        queue_name: str,
        *,
        message_ids: Iterable[str] | None = None,
        actor_name: str | None = None,
        limit: int | None = None,
    ) -> int:
        """Send dead letters back to ``queue_name`` with their retry count reset.

        Each is republished and confirmed before it is removed from ``<queue>.XQ``,
        so a crash half way duplicates at worst. Dead letters that are not aqueue
        messages are left where they are.
        """
        await self.declare_queue(queue_name)
        select = dead_letter_filter(message_ids=message_ids, actor_name=actor_name)

        async def requeue(letter: DeadLetter) -> None:
            await self._publish_message(replay_message(letter, queue_name), None)

        return await self._take_dead_letters(queue_name, select, requeue, limit)

    async def purge_dead_letters(
        self,
        queue_name: str,
        *,
        message_ids: Iterable[str] | None = None,
        older_than: float | None = None,
    ) -> int:
        """Delete dead letters of ``queue_name`` (those failed ``older_than`` seconds ago)."""
        select = dead_letter_filter(message_ids=message_ids, older_than=older_than)

        async def drop(letter: DeadLetter) -> None:
            pass

        return await self._take_dead_letters(queue_name, select, drop, None)

    async def _take_dead_letters(
        self,
        queue_name: str,
        select: Callable[[DeadLetter], bool],
        handle: Callable[[DeadLetter], Awaitable[None]],
        limit: int | None,
    ) -> int:
        """Ack each selected dead letter after ``handle`` succeeded; leave the others."""
        taken = 0
        async with self._temporary_channel() as channel:
            while limit is None or taken < limit:
                got = await channel.basic_get(dead_letter_queue_name(queue_name), no_ack=False)
                if not isinstance(got.delivery, Basic.GetOk):
                    break
                letter = _dead_letter_of(got)
                if not select(letter):
                    continue  # stays unacked until the channel closes, then goes back
                try:
                    await handle(letter)
                except MessageDecodeError:
                    continue  # not an aqueue message: left where it is
                await channel.basic_ack(got.delivery.delivery_tag)  # type: ignore[arg-type]
                taken += 1
        return taken

    async def queue_info(self, queue_name: str) -> QueueInfo | None:
        """Ready messages and consumers of ``queue_name``, or None if it does not exist."""
        channel = await self._inspection_channel()
        try:
            result = await channel.queue_declare(queue_name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
        return QueueInfo(
            name=queue_name,
            ready=int(result.message_count or 0),
            consumers=int(result.consumer_count or 0),
        )

    @contextlib.asynccontextmanager
    async def _temporary_channel(self) -> AsyncIterator[aiormq.abc.AbstractChannel]:
        await self.connect()
        assert self._connection is not None
        channel = self._connection.channel(publisher_confirms=False)
        await channel.initialize()
        try:
            yield await channel.get_underlay_channel()
        finally:
            await channel.close()


def _dead_letter_of(got: DeliveredMessage) -> DeadLetter:
    properties = got.header.properties
    return DeadLetter(
        body=got.body, headers=dict(properties.headers or {}), message_id=properties.message_id
    )


class _Acker:
    """Acknowledges the finished deliveries of one channel, in batches.

    A finished delivery is acked soon after, together with every other finished one, by
    one ``basic.ack(multiple=True)`` for the highest tag below which every delivery is
    settled: a delivery whose actor still runs is never covered. One sender at a time
    writes the acks, so they reach RabbitMQ in increasing order.
    """

    __slots__ = ("_acked", "_channel", "_outstanding", "_requeued", "_scheduled", "_sender")

    def __init__(self, channel: aiormq.abc.AbstractChannel) -> None:
        self._channel = channel
        self._outstanding: collections.deque[int] = collections.deque()  # in delivery order
        self._acked: set[int] = set()  # finished, ack not sent yet
        self._requeued: set[int] = set()  # nacked already: settled, never named in an ack
        self._scheduled = False
        self._sender: asyncio.Future[None] | None = None

    def delivered(self, tag: int) -> None:
        self._outstanding.append(tag)

    def ack(self, tag: int) -> None:
        self._acked.add(tag)
        self._schedule()

    async def requeue(self, tag: int) -> None:
        try:
            await self._channel.basic_nack(tag, requeue=True, wait=False)
        except _CONNECTION_ERRORS as exc:
            log.debug("requeue of delivery %s failed (%r); RabbitMQ requeues it", tag, exc)
            return  # the channel is gone: nothing more will be acked on it
        # Settled: a later multiple ack may span it, but must not name it (RabbitMQ would
        # close the channel on an unknown delivery tag). Acks held behind it may go now.
        self._requeued.add(tag)
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled and self._sender is None:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start_sender)

    def _start_sender(self) -> None:
        self._scheduled = False
        outstanding = self._outstanding
        if (
            self._sender is None
            and outstanding
            and (outstanding[0] in self._acked or outstanding[0] in self._requeued)
        ):
            self._sender = asyncio.ensure_future(self._send_all())

    def _take_contiguous(self) -> int | None:
        """The highest acked tag below which every delivery is settled, or None."""
        last = None
        outstanding, acked, requeued = self._outstanding, self._acked, self._requeued
        while outstanding:
            tag = outstanding[0]
            if tag in acked:
                acked.discard(tag)
                last = tag
            elif tag in requeued:
                requeued.discard(tag)
            else:
                break
            outstanding.popleft()
        return last

    async def _send_all(self) -> None:
        try:
            while (last := self._take_contiguous()) is not None:
                await self._channel.basic_ack(last, multiple=True, wait=False)
        except _CONNECTION_ERRORS as exc:
            # The channel is gone, so RabbitMQ already put the messages back in their queue.
            log.debug("acks failed (%r); RabbitMQ redelivers", exc)
        finally:
            self._sender = None

    async def flush(self) -> None:
        """Send the pending acks now (before the channel closes)."""
        if self._sender is not None:
            await asyncio.gather(self._sender, return_exceptions=True)
        if self._sender is None:
            self._sender = asyncio.ensure_future(self._send_all())
            await asyncio.gather(self._sender, return_exceptions=True)


class _RabbitmqDelivery:
    __slots__ = ("_acker", "_message", "_settled", "_tag")

    def __init__(self, message: DeliveredMessage, acker: _Acker) -> None:
        self._message = message
        self._acker = acker
        self._tag: int = message.delivery.delivery_tag  # type: ignore[union-attr,assignment]
        self._settled = False
        acker.delivered(self._tag)

    @property
    def body(self) -> bytes:
        return self._message.body

    @property
    def redelivered(self) -> bool:
        return bool(self._message.delivery.redelivered)  # type: ignore[union-attr]

    @property
    def message_id(self) -> str | None:
        return self._message.header.properties.message_id

    async def ack(self) -> None:
        if not self._settled:
            self._settled = True
            self._acker.ack(self._tag)

    async def requeue(self) -> None:
        if not self._settled:
            self._settled = True
            await self._acker.requeue(self._tag)


class _QueueConsumer:
    """One queue consumed on its own robust channel, re-subscribed after every reopen."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        queue_name: str,
        prefetch: int,
        handler: DeliveryHandler,
        redeclare: Callable[[str], Awaitable[None]],
    ) -> None:
        self._connection = connection
        self._redeclare = redeclare
        self._resubscribing: asyncio.Future[None] | None = None
        self.queue_name = queue_name
        self._prefetch = prefetch
        self._handler = handler
        self._channel: AbstractRobustChannel | None = None
        self._consumer_tag: str | None = None
        self._acker: _Acker | None = None
        self._cancelled = False

    async def start(self) -> None:
        channel = self._connection.channel(publisher_confirms=False)
        await channel.initialize()
        await channel.set_qos(prefetch_count=self._prefetch)
        channel.reopen_callbacks.add(self._on_reopen)
        channel.close_callbacks.add(self._on_close)
        self._channel = channel
        await self._subscribe()

    def _on_close(self, _channel: Any, exc: BaseException | None = None) -> None:
        if self._cancelled or exc is None:
            return
        if isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed) and (
            "acknowledgement" in str(exc) or "timed out" in str(exc)
        ):
            log.warning(
                "RabbitMQ closed the channel of queue %s: a message stayed unacknowledged longer "
                "than the node's consumer_timeout, so RabbitMQ requeues it and it will run again. "
                "Raise consumer_timeout (rabbitmq.conf: consumer_timeout = <ms>) above your "
                "longest task, or lower the actor's time_limit. Reopening the channel. (%s)",
                self.queue_name,
                exc,
            )
        else:
            log.warning("channel of queue %s closed (%s); reopening it", self.queue_name, exc)

    async def _subscribe(self) -> None:
        assert self._channel is not None
        underlay = await self._channel.get_underlay_channel()
        # Delivery tags are per channel: a reopened channel gets an acker of its own, and
        # deliveries of the old one keep theirs (their acks then fail quietly: RabbitMQ
        # has already requeued them).
        acker = self._acker = _Acker(underlay)
        handler = self._handler

        async def on_delivery(message: DeliveredMessage) -> None:
            await handler(_RabbitmqDelivery(message, acker))

        result = await underlay.basic_consume(self.queue_name, on_delivery)
        self._consumer_tag = result.consumer_tag
        underlay.on_consumer_cancel_callbacks.add(self._on_server_cancel)

    def _on_server_cancel(self, frame: Any) -> None:
        """RabbitMQ cancelled the consumer (its queue was deleted, a node failed over)."""
        if self._cancelled or getattr(frame, "consumer_tag", None) != self._consumer_tag:
            return
        log.warning("RabbitMQ cancelled the consumer of queue %s; consuming again", self.queue_name)
        if self._resubscribing is None or self._resubscribing.done():
            self._resubscribing = asyncio.ensure_future(self._resubscribe())

    async def _resubscribe(self) -> None:
        delay = 0.5
        while not self._cancelled:
            try:
                await self._redeclare(self.queue_name)
                await self._subscribe()
                return
            except Exception as exc:
                log.warning(
                    "could not consume queue %s again (%s); retrying in %.1f s",
                    self.queue_name,
                    _describe_error(exc),
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _on_reopen(self, channel: Any) -> None:
        if self._cancelled:
            return
        log.info("channel of queue %r reopened; consuming again", self.queue_name)
        await self._subscribe()

    async def cancel(self) -> None:
        self._cancelled = True
        if self._channel is None or self._consumer_tag is None:
            return
        try:
            underlay = await asyncio.wait_for(self._channel.get_underlay_channel(), 5)
            await underlay.basic_cancel(self._consumer_tag, timeout=5)
        except _CONNECTION_ERRORS_OR_TIMEOUT as exc:
            log.debug("cancel of consumer on %r failed: %r", self.queue_name, exc)

    async def close(self) -> None:
        self._cancelled = True
        if self._resubscribing is not None:
            self._resubscribing.cancel()
        if self._acker is not None:
            await self._acker.flush()
        channel, self._channel = self._channel, None
        if channel is not None:
            try:
                await channel.close()
            except _CONNECTION_ERRORS as exc:
                log.debug("closing the channel of %r failed: %r", self.queue_name, exc)


def _describe_error(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, asyncio.TimeoutError):
        text = "timed out"
    return text.splitlines()[0] if text else type(exc).__name__
