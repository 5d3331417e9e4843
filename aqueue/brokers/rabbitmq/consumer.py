"""Consuming one queue on a channel of its own, subscribed again whenever it is lost."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiormq
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from aiormq.abc import DeliveredMessage

from ...broker import DeliveryHandler
from .acker import _Acker, _RabbitmqDelivery
from .errors import CONNECTION_ERRORS, CONNECTION_ERRORS_OR_TIMEOUT, describe_error

log = logging.getLogger("aqueue.brokers.rabbitmq")

_MAX_BACKOFF = 30.0


class QueueConsumer:
    """One queue consumed on its own robust channel of the consuming connection.

    Whenever the subscription is lost (the channel reopened after a channel error or a
    reconnect, possibly to another node; RabbitMQ cancelled the consumer because its
    queue was deleted or its leader moved), the queue is declared again and consumed
    again, retrying with backoff and a warning until it works.
    """

    def __init__(
        self,
        connection: AbstractRobustConnection,
        queue_name: str,
        prefetch: int,
        handler: DeliveryHandler,
        declare: Callable[[str], Awaitable[None]],
    ) -> None:
        self._connection = connection
        self._declare = declare
        self._resubscribing: asyncio.Future[None] | None = None
        self.queue_name = queue_name
        self._prefetch = prefetch
        self._handler = handler
        self._channel: AbstractRobustChannel | None = None
        self._consumer_tag: str | None = None
        self._acker: _Acker | None = None
        self._cancelled = False
        self._running: set[asyncio.Future[None]] = set()  # handlers of deliveries

    @property
    def consuming(self) -> bool:
        """Whether the queue is subscribed now (False while subscribing again)."""
        return self._consumer_tag is not None and not self._cancelled

    async def start(self) -> None:
        channel = self._connection.channel(publisher_confirms=False)
        await channel.initialize()
        await channel.set_qos(prefetch_count=self._prefetch)
        channel.reopen_callbacks.add(self._on_reopen)
        channel.close_callbacks.add(self._on_close)
        self._channel = channel
        await self._subscribe()

    def _on_close(self, _channel: Any, exc: BaseException | None = None) -> None:
        self._consumer_tag = None
        if self._cancelled or exc is None:
            return
        if isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed) and (
            "acknowledgement" in str(exc) or "timed out" in str(exc)
        ):
            log.warning(
                "RabbitMQ closed the channel of queue %s: a message stayed unacknowledged longer "
                "than the node's consumer_timeout, so RabbitMQ requeues it: another worker may run "
                "it again (this one lets the actor finish and settles the copy it gets back). "
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
        # Delivery tags are per channel, not per subscription: a new subscription on the
        # same channel (after RabbitMQ cancelled the consumer) keeps the channel's acker, so
        # acks stay in order and a multiple ack never covers a delivery still running. A
        # reopened channel gets an acker of its own, and deliveries of the old one keep
        # theirs (their acks then fail quietly: RabbitMQ has already requeued them).
        acker = self._acker
        if acker is None or acker.channel is not underlay:
            acker = self._acker = _Acker(underlay)
        handler, running = self._handler, self._running

        async def on_delivery(message: DeliveredMessage) -> None:
            # A task of our own, not aiormq's (which it cancels when the channel closes):
            # work that runs when the connection drops goes on, and its result is kept.
            task = asyncio.ensure_future(handler(_RabbitmqDelivery(message, acker)))
            running.add(task)
            task.add_done_callback(running.discard)

        result = await underlay.basic_consume(self.queue_name, on_delivery)
        self._consumer_tag = result.consumer_tag
        underlay.on_consumer_cancel_callbacks.add(self._on_server_cancel)

    def _on_server_cancel(self, frame: Any) -> None:
        """RabbitMQ cancelled the consumer (its queue was deleted, a node failed over)."""
        if self._cancelled or getattr(frame, "consumer_tag", None) != self._consumer_tag:
            return
        self._consumer_tag = None
        log.warning("RabbitMQ cancelled the consumer of queue %s; consuming again", self.queue_name)
        self._resubscribe_soon()

    async def _on_reopen(self, _channel: Any) -> None:
        if self._cancelled:
            return
        log.info("channel of queue %r reopened; consuming again", self.queue_name)
        self._resubscribe_soon()

    def _resubscribe_soon(self) -> None:
        if self._resubscribing is None or self._resubscribing.done():
            self._resubscribing = asyncio.ensure_future(self._resubscribe())

    async def _resubscribe(self) -> None:
        delay = 0.5
        while not self._cancelled:
            try:
                # The node may lack the queue (reset, rebuilt, deleted meanwhile).
                await self._declare(self.queue_name)
                await self._subscribe()
                return
            except Exception as exc:
                log.warning(
                    "could not consume queue %s again (%s); retrying in %.1f s",
                    self.queue_name,
                    describe_error(exc),
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF)

    async def cancel(self) -> None:
        """Stop the deliveries: wait for RabbitMQ's answer to the cancel, as long as the
        caller does (a worker's stop bounds every queue's cancel by its shutdown timeout)."""
        self._cancelled = True
        if self._resubscribing is not None:
            self._resubscribing.cancel()
        channel, consumer_tag = self._channel, self._consumer_tag
        if channel is None or consumer_tag is None:
            return
        if not self._connection.connected.is_set():
            return  # lost: RabbitMQ dropped the subscription with the connection
        try:
            underlay = await channel.get_underlay_channel()
            answer = asyncio.ensure_future(underlay.basic_cancel(consumer_tag))
        except CONNECTION_ERRORS as exc:
            log.debug("cancel of consumer on %r failed: %r", self.queue_name, exc)
            return
        answer.add_done_callback(lambda done: done.cancelled() or done.exception())
        try:
            # Shielded: aiormq answers a cancelled call by closing the channel, with a
            # warning per queue; an unanswered one just stays pending.
            await asyncio.shield(answer)
        except asyncio.CancelledError:
            if not answer.done():
                # RabbitMQ did not answer in the caller's time: it is unreachable. A
                # Channel.Close would wait behind this call: close() leaves the channel to
                # the connection's close, and RabbitMQ requeues what it did not get acks for.
                self._channel = None
            raise
        except CONNECTION_ERRORS_OR_TIMEOUT as exc:
            log.debug("cancel of consumer on %r failed: %r", self.queue_name, exc)

    async def close(self) -> None:
        """Send the pending acks and close the channel (its unacked deliveries go back)."""
        self._cancelled = True
        if self._resubscribing is not None:
            self._resubscribing.cancel()
        if self._acker is not None:
            await self._acker.flush()
        channel, self._channel = self._channel, None
        if channel is not None:
            try:
                await channel.close()
            except CONNECTION_ERRORS as exc:
                log.debug("closing the channel of %r failed: %r", self.queue_name, exc)
