"""``Actor.call`` on RabbitMQ: Direct Reply-To on a channel of the publishing connection.

One channel per broker, opened on the first call (and again after it was lost with its
connection), consumes ``amq.rabbitmq.reply-to`` without acks: no queue, no connection of
its own. RabbitMQ gives that channel an address (``amq.rabbitmq.reply-to.<...>``) that it
writes into the ``reply_to`` property of what the channel publishes; the channel learns it
once, from a probe that RabbitMQ returns as unroutable, and every call carries it in its
``reply_to`` option, so the request itself goes through the usual confirmed publish.

Replies are at most once (RabbitMQ's Direct Reply-To): one whose caller is gone is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import aiormq
from pamqp.commands import Basic

from ..._replies import ReplySupport
from ...errors import BrokerConnectionError, BrokerError
from .broker_parts import BrokerParts
from .connections import RoleConnection

__all__ = ["DIRECT_REPLY_TO", "DirectReplyTo"]

log = logging.getLogger("aqueue.brokers.rabbitmq")

#: RabbitMQ's pseudo-queue of Direct Reply-To.
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


class _ReplyChannel:
    """The channel that consumes Direct Reply-To, its address and the calls waiting."""

    def __init__(self, role: RoleConnection) -> None:
        self._role = role
        self._lock = asyncio.Lock()
        self.channel: aiormq.abc.AbstractChannel | None = None
        self.address = ""
        # correlation id -> (the address it was sent with, its reply)
        self.waiting: dict[str, tuple[str, asyncio.Future[bytes]]] = {}

    async def open(self) -> str:
        """The reply address, after opening the channel if it is not open."""
        channel = self.channel
        if channel is not None and not channel.is_closed:
            return self.address
        async with self._lock:
            channel = self.channel
            if channel is not None and not channel.is_closed:
                return self.address
            connection = await self._role.connect()
            await connection.connected.wait()
            transport = connection.transport
            if transport is None:  # lost again meanwhile; the caller's timeout bounds this
                raise BrokerConnectionError("the publishing connection was lost; try again")
            channel = await transport.connection.channel(publisher_confirms=True)
            await channel.basic_consume(DIRECT_REPLY_TO, self._on_reply, no_ack=True)
            address = await _probe_address(channel)
            self.channel, self.address = channel, address
            channel.closing.add_done_callback(lambda _: self._lost(channel, address))
            log.debug("Direct Reply-To channel open on %s", self._role.node)
        return address

    async def _on_reply(self, message: aiormq.abc.DeliveredMessage) -> None:
        correlation_id = message.header.properties.correlation_id or ""
        _, reply = self.waiting.pop(correlation_id, ("", None))
        if reply is None or reply.done():
            log.debug("reply to message %s discarded: nobody waits for it", correlation_id)
            return
        reply.set_result(message.body)

    def _lost(self, channel: aiormq.abc.AbstractChannel, address: str) -> None:
        if self.channel is channel:
            self.channel, self.address = None, ""
        for correlation_id, (sent_to, reply) in list(self.waiting.items()):
            if sent_to == address:
                del self.waiting[correlation_id]
                if not reply.done():
                    reply.set_exception(
                        BrokerConnectionError(
                            f"the channel awaiting the reply to message {correlation_id} "
                            "was lost with its connection: the reply cannot arrive (the work "
                            "may still run)"
                        )
                    )


async def _probe_address(channel: aiormq.abc.AbstractChannel) -> str:
    """The Direct Reply-To address of ``channel``, read from a returned probe."""
    try:
        await channel.basic_publish(
            b"",
            exchange="",
            routing_key=f"aqueue.reply-address-probe.{uuid.uuid4().hex}",
            properties=Basic.Properties(reply_to=DIRECT_REPLY_TO),
            mandatory=True,
        )
    except aiormq.exceptions.PublishError as exc:
        returned = exc.message
        address = (returned.header.properties.reply_to if returned is not None else None) or ""
        if address.startswith(DIRECT_REPLY_TO + "."):
            return address
    raise BrokerError("RabbitMQ did not say this channel's Direct Reply-To address")


class DirectReplyTo(BrokerParts, ReplySupport):
    """The reply methods of :class:`~aqueue.RabbitmqBroker`."""

    _reply_channel: _ReplyChannel | None = None

    def _replies(self) -> _ReplyChannel:
        if self._reply_channel is None:
            self._reply_channel = _ReplyChannel(self._publishing)
        return self._reply_channel

    async def _expect_reply(self, correlation_id: str) -> tuple[str, asyncio.Future[bytes]]:
        replies = self._replies()
        address = await replies.open()
        reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        replies.waiting[correlation_id] = (address, reply)
        return address, reply

    def _forget_reply(self, correlation_id: str) -> None:
        self._replies().waiting.pop(correlation_id, None)

    async def publish_reply(self, address: str, correlation_id: str, body: bytes) -> None:
        """Publish a reply on the publishing connection, confirmed within ``publish_timeout``.

        Not mandatory: RabbitMQ before 4.2 returns every message to a Direct Reply-To
        address as unroutable, delivered or not; a reply whose caller is gone is dropped.
        """

        async def publish() -> None:
            channel = await self._publishing.channel("publish", confirms=True)
            underlay = await channel.get_underlay_channel()
            await underlay.basic_publish(
                body,
                exchange="",
                routing_key=address,
                properties=Basic.Properties(
                    content_type="application/json",
                    correlation_id=correlation_id,
                    message_id=correlation_id,
                ),
                mandatory=False,
            )

        await asyncio.wait_for(publish(), self.publish_timeout)
