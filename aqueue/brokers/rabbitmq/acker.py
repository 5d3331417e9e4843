"""Acknowledging a channel's deliveries: in batches, never a running one, and none held for long
behind one that runs."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
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
        self,
        routing_key: str,
        body: bytes,
        *,
        message_id: str,
        headers: dict[str, Any] | None,
        priority: int | None = None,
    ) -> None: ...


#: Seconds the oldest unsettled delivery of a channel may run before the deliveries that
#: finished after it are acked one by one, rather than together once it finishes: they count
#: against the prefetch until acked, so a long message would stall the rest of its queue.
HEAD_OF_LINE_GRACE = 0.1


class _Acker:
    """Acknowledges the finished deliveries of one channel, in batches.

    A finished delivery is acked soon after, together with every other finished one, by
    one ``basic.ack(multiple=True)`` for the highest tag below which every delivery is
    settled: a delivery whose actor still runs is never covered. When the oldest unsettled
    delivery has run for :data:`HEAD_OF_LINE_GRACE`, those finished after it are acked one
    by one instead, so that they free their prefetch slots. One sender at a time writes the
    acks, so they reach RabbitMQ in increasing order.
    """

    __slots__ = (
        "_acked",
        "_channel",
        "_late_check",
        "_outstanding",
        "_scheduled",
        "_sender",
        "_settled",
    )

    def __init__(self, channel: aiormq.abc.AbstractChannel) -> None:
        self._channel = channel
        # (tag, when delivered), in delivery order
        self._outstanding: collections.deque[tuple[int, float]] = collections.deque()
        self._acked: set[int] = set()  # finished, ack not sent yet
        # Nacked, or acked on its own: settled, never named in an ack again
        self._settled: set[int] = set()
        self._scheduled = False
        self._sender: asyncio.Future[None] | None = None
        self._late_check: asyncio.TimerHandle | None = None

    @property
    def channel(self) -> aiormq.abc.AbstractChannel:
        """The channel whose deliveries this acker settles."""
        return self._channel

    def delivered(self, tag: int) -> None:
        self._outstanding.append((tag, time.monotonic()))

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
        self._settled.add(tag)
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled and self._sender is None:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start_sender)

    def _start_sender(self) -> None:
        self._scheduled = False
        if self._sender is None and self._acked:
            self._sender = asyncio.ensure_future(self._send_all())

    def _take_contiguous(self) -> int | None:
        """The highest acked tag below which every delivery is settled, or None."""
        last = None
        outstanding, acked, settled = self._outstanding, self._acked, self._settled
        while outstanding:
            tag = outstanding[0][0]
            if tag in acked:
                acked.discard(tag)
                last = tag
            elif tag in settled:
                settled.discard(tag)
            else:
                break
            outstanding.popleft()
        return last

    def _take_held(self, *, force: bool) -> list[int]:
        """The acked tags held behind an unsettled delivery that ran past the grace (any
        unsettled one with ``force``), to be acked one by one; else schedules a look later."""
        if not self._acked or not self._outstanding:
            return []
        waited = time.monotonic() - self._outstanding[0][1]
        if not force and waited < HEAD_OF_LINE_GRACE:
            if self._late_check is None:
                self._late_check = asyncio.get_running_loop().call_later(
                    HEAD_OF_LINE_GRACE - waited, self._look_again
                )
            return []
        held = sorted(self._acked)
        self._acked.clear()
        self._settled.update(held)
        return held

    def _look_again(self) -> None:
        self._late_check = None
        self._schedule()

    async def _send_all(self, *, force: bool = False) -> None:
        channel = self._channel
        try:
            while True:
                last = self._take_contiguous()
                if last is not None:
                    await channel.basic_ack(last, multiple=True, wait=False)
                    continue
                held = self._take_held(force=force)
                if not held:
                    break
                for tag in held:
                    await channel.basic_ack(tag, multiple=False, wait=False)
        except CONNECTION_ERRORS as exc:
            # The channel is gone, so RabbitMQ already put the messages back in their queue.
            log.debug("acks failed (%r); RabbitMQ redelivers", exc)
        finally:
            self._sender = None

    async def flush(self) -> None:
        """Send the pending acks now (before the channel closes), held ones included."""
        if self._sender is not None:
            await asyncio.gather(self._sender, return_exceptions=True)
        if self._sender is None:
            self._sender = asyncio.ensure_future(self._send_all(force=True))
            await asyncio.gather(self._sender, return_exceptions=True)
        if self._late_check is not None:
            self._late_check.cancel()
            self._late_check = None


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
    def headers(self) -> dict[str, Any]:
        """A copy of the delivery's AMQP headers (empty if it has none)."""
        return dict(self._message.header.properties.headers or {})

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
            headers = self.headers
            headers.pop("x-delivery-count", None)  # a quorum queue's count of deliveries
            try:
                await asyncio.wait_for(
                    publish(
                        queue_name,
                        self.body,
                        message_id=message_id,
                        headers=headers,
                        # Kept, as a requeue would keep it: a priority queue ranks it again.
                        priority=self._message.header.properties.priority,
                    ),
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
