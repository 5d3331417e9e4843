"""The task events stream on RabbitMQ: declared once, batches published confirmed.

:class:`~aqueue.middleware.TaskEvents` hands each batch of events to the broker's
``publish_events``; on RabbitMQ they go to a stream (``x-queue-type: stream``, 3.9+),
kept ``max_age`` and at most ``max_bytes``, which the dashboard reads without removing
anything.
"""

from __future__ import annotations

import uuid
from typing import Any

import aiormq

from .broker_parts import BrokerParts
from .single import publish_declared

__all__ = ["EventStreams", "declare_stream", "stream_arguments"]


def stream_arguments(max_age: str, max_bytes: int) -> dict[str, Any]:
    """A stream's arguments: ``max_age`` as RabbitMQ writes it (``7D``, ``12h``), bytes."""
    return {"x-queue-type": "stream", "x-max-age": max_age, "x-max-length-bytes": max_bytes}


async def declare_stream(
    channel: aiormq.abc.AbstractChannel, stream: str, *, max_age: str, max_bytes: int
) -> None:
    """Declare ``stream`` (durable; nothing happens if it exists with these arguments).

    Raises:
        aiormq.exceptions.PreconditionFailed: it exists with other arguments (``channel``
            is closed then: give it one of its own).
    """
    await channel.queue_declare(
        stream, durable=True, arguments=stream_arguments(max_age, max_bytes)
    )


class EventStreams(BrokerParts):
    """The task-events method of :class:`~aqueue.RabbitmqBroker`."""

    #: Streams this broker declared (an instance's own set once it declared one).
    _declared_streams: frozenset[str] = frozenset()

    async def publish_events(
        self, stream: str, body: bytes, *, max_age: str, max_bytes: int
    ) -> None:
        """Publish one batch of task events to ``stream`` (declared first), confirmed.

        Raises what :meth:`publish` raises; the caller keeps the batch to send it again.
        """

        async def declare() -> None:
            # A channel of its own: a stream declared with other arguments closes it.
            async with self._control.temporary_channel() as channel:
                await declare_stream(channel, stream, max_age=max_age, max_bytes=max_bytes)
            self._declared_streams = self._declared_streams | {stream}

        if stream not in self._declared_streams:
            await declare()
        await publish_declared(
            lambda: self.publish(stream, body, message_id=str(uuid.uuid4())), declare
        )
