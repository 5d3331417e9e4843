"""Many publishes in one socket write, their confirms tracked in aiormq's own table.

aiormq's ``basic_publish`` writes each message on its own: a lock, a timeout, a task hop
to the connection's writer and a ``send()`` system call per message. For a batch
(``send_many``) that per-message cost is most of the CPU, so here the frames of up to
:data:`CHUNK_MESSAGES` messages are marshalled into one write, and each message's
confirm future is registered exactly as ``basic_publish`` registers it (the channel's
next delivery tag, and its message id for ``basic.return``). Holding the channel's
publish lock keeps the delivery tags in the order RabbitMQ numbers the publishes.

This reaches into aiormq's channel; :func:`can_batch` checks that what it uses is
there, and the publisher falls back to one ``basic_publish`` per message if not.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiormq
import pamqp.exceptions
import pamqp.frame
from aiormq.abc import ChannelFrame
from pamqp.commands import Basic
from pamqp.header import ContentHeader

__all__ = ["CHUNK_BYTES", "CHUNK_MESSAGES", "Outgoing", "can_batch", "write_publishes"]

# One write holds at most this many messages or bytes of bodies (a chunk is at least one).
CHUNK_MESSAGES = 256
CHUNK_BYTES = 256 * 1024

_CHANNEL_PARTS = (
    "lock",
    "delivery_tag",
    "confirmations",
    "message_id_delivery_tag",
    "write_queue",
    "number",
    "create_future",
    "_split_body",
)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish: where to, its body and its AMQP properties."""

    routing_key: str
    body: bytes
    message_id: str
    exchange: str = ""
    headers: dict[str, Any] | None = None
    priority: int | None = None

    def properties(self) -> Basic.Properties:
        """Persistent, JSON, with the message id ``basic.return`` is matched by."""
        return Basic.Properties(
            delivery_mode=2,
            content_type="application/json",
            message_id=self.message_id,
            headers=self.headers,
            priority=self.priority,
        )


def can_batch(channel: aiormq.abc.AbstractChannel) -> bool:
    """Whether ``channel`` is an open confirm-mode aiormq channel with the parts used here."""
    return (
        all(hasattr(channel, part) for part in _CHANNEL_PARTS)
        and getattr(channel, "publisher_confirms", False) is True
        and not channel.is_closed
    )


async def write_publishes(
    channel: aiormq.abc.AbstractChannel,
    items: Sequence[Outgoing],
    futures: list[asyncio.Future[Any] | None],
) -> None:
    """Write the publishes of ``items`` in order, appending one entry per item to
    ``futures`` as its chunk is queued for the socket: its confirm future, or None for an
    item whose frames could not be made (a name too long for AMQP, say; not written).

    If this raises (the channel closed, the caller's timeout), ``futures`` holds the
    entries of the items written before, in order; the rest were not written. The caller
    must cancel the futures it stops waiting for.
    """
    ch: Any = channel  # aiormq's private parts, checked by can_batch
    async with ch.lock:
        start = 0
        while start < len(items):
            end, size = start, 0
            while end < len(items) and end - start < CHUNK_MESSAGES and size < CHUNK_BYTES:
                size += len(items[end].body)
                end += 1
            payloads = [_marshalled(ch, item) for item in items[start:end]]
            if ch.is_closed:
                raise aiormq.exceptions.ChannelInvalidStateError("the channel is closed")
            registered = [
                None if payload is None else _register(ch, item.message_id)
                for item, payload in zip(items[start:end], payloads, strict=True)
            ]
            frame = ChannelFrame(
                payload=b"".join(p for p in payloads if p is not None), should_close=False
            )
            try:
                if frame.payload:
                    await ch.write_queue.put(frame)
            except BaseException:
                # Not queued: the broker never sees these, so their tags are free again.
                for future in reversed(registered):
                    if future is not None:
                        ch.confirmations.pop(ch.delivery_tag, None)
                        ch.delivery_tag -= 1
                        future.cancel()
                raise
            futures.extend(registered)
            start = end


def _marshalled(ch: Any, item: Outgoing) -> bytes | None:
    """The frames of one publish, as bytes; None if they cannot be made."""
    try:
        return b"".join(pamqp.frame.marshal(frame, ch.number) for frame in _frames(ch, item))
    except (TypeError, ValueError, struct.error, pamqp.exceptions.PAMQPException):
        return None


def _frames(ch: Any, item: Outgoing) -> list[Any]:
    return [
        Basic.Publish(exchange=item.exchange, routing_key=item.routing_key, mandatory=True),
        ContentHeader(properties=item.properties(), body_size=len(item.body)),
        *ch._split_body(item.body),
    ]


def _register(ch: Any, message_id: str) -> asyncio.Future[Any]:
    ch.delivery_tag += 1
    tag = ch.delivery_tag
    future: asyncio.Future[Any] = ch.create_future()
    ch.confirmations[tag] = future
    ch.message_id_delivery_tag[message_id] = tag

    def forget(_: asyncio.Future[Any]) -> None:
        # The confirmation entry stays: aiormq drops it when the broker answers (quietly
        # for a future given up on, as for its own publishes).
        if ch.message_id_delivery_tag.get(message_id) == tag:
            del ch.message_id_delivery_tag[message_id]

    future.add_done_callback(forget)
    return future
