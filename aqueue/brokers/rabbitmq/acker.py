"""Acknowledging a channel's deliveries: in order, in batches, never a running one."""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any, Protocol

import aiormq
from aiormq.abc import DeliveredMessage

from .errors import CONNECTION_ERRORS, describe_error

log = logging.getLogger("aqueue.brokers.rabbitmq")

#: Seconds a give-back waits for its confirm before it requeues instead: a stop must not wait
#: for a lost connection to come back (RabbitMQ requeues the delivery with it anyway).
GIVE_BACK_TIMEOUT = 5.0


class Publish(Protocol):
    """The broker's confirmed publish (``RabbitmqBroker.publish``)."""

    async def __call__(
        self, routing_key: str, body: bytes, *, message_id: str, headers: dict[str, Any] | None
    ) -> None: ...


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

    @property
    def channel(self) -> aiormq.abc.AbstractChannel:
        """The channel whose deliveries this acker settles."""
        return self._channel

    def delivered(self, tag: int) -> None:
        self._outstanding.append(tag)

    def ack(self, tag: int) -> None:
        self._acked.add(tag)
        self._schedule()

    async def requeue(self, tag: int) -> None:
        try:
            await self._channel.basic_nack(tag, requeue=True, wait=False)
        except CONNECTION_ERRORS as exc:
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
        except CONNECTION_ERRORS as exc:
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

    @property
    def lost(self) -> bool:
        return not self._settled and self._acker.channel.is_closed

    async def ack(self) -> None:
        if not self._settled:
            self._settled = True
            self._acker.ack(self._tag)

    async def requeue(self) -> None:
        if not self._settled:
            self._settled = True
            await self._acker.requeue(self._tag)

    async def give_back(self, queue_name: str, publish: Publish, *, can_publish: bool) -> None:
        """Publish the message to ``queue_name`` again (same body, message id and headers)
        and ack it once confirmed: a new message, not a redelivery. Requeue it instead if
        the publish fails or would wait (``can_publish`` False: the publishing connection
        is down or blocked by a resource alarm)."""
        if self._settled:
            return
        message_id = self.message_id
        # On a closed channel RabbitMQ has requeued the message already: a copy would double it.
        if message_id is not None and can_publish and not self._acker.channel.is_closed:
            headers = dict(self._message.header.properties.headers or {})
            headers.pop("x-delivery-count", None)  # a quorum queue's count of deliveries
            try:
                await asyncio.wait_for(
                    publish(queue_name, self.body, message_id=message_id, headers=headers),
                    GIVE_BACK_TIMEOUT,
                )
            except Exception as exc:  # the timeout too
                log.warning(
                    "could not give message %s back to queue %s (%s); requeueing it",
                    message_id,
                    queue_name,
                    describe_error(exc),
                )
            else:
                await self.ack()
                return
        await self.requeue()
