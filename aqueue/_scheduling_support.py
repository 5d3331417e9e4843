"""What a broker offers the scheduler: a clock, and queues with a single active consumer."""

from __future__ import annotations

import abc
import time
from collections.abc import Awaitable, Callable

from ._deliveries import Consumer, DeliveryHandler

__all__ = ["SchedulingSupport"]


class SchedulingSupport(abc.ABC):
    """The part of :class:`~aqueue.broker.Broker` the scheduler (``aqueue._scheduler``) uses."""

    #: What ``_add_clock_listener`` registered (set up by the broker's ``__init__``).
    _clock_listeners: list[Callable[[], Awaitable[None]]]

    def _now(self) -> float:
        """The time schedules tick on, in seconds since the epoch (the in-memory broker's
        can be fast-forwarded)."""
        return time.time()

    def _add_clock_listener(self, listener: Callable[[], Awaitable[None]]) -> Callable[[], None]:
        """Have ``listener`` awaited whenever ``_now()`` jumps ahead; returns its remover."""
        listeners = self._clock_listeners

        def remove() -> None:
            if listener in listeners:
                listeners.remove(listener)

        listeners.append(listener)
        return remove

    @abc.abstractmethod
    async def consume_single(self, queue_name: str, *, handler: DeliveryHandler) -> Consumer:
        """Consume ``queue_name``, a durable queue with a single active consumer: of all
        the processes that consume it, one at a time gets its messages; when it goes
        (or its connection), the next one gets them, unacknowledged ones included."""

    @abc.abstractmethod
    async def publish_single(self, queue_name: str, body: bytes, *, message_id: str) -> None:
        """Publish ``body`` to a queue of :meth:`consume_single`, and wait for the confirm."""

    @abc.abstractmethod
    async def publish_latest(self, queue_name: str, body: bytes) -> None:
        """Publish ``body`` to ``queue_name``, a durable queue that keeps only its latest
        message (the scheduler's status, for ``aqueue schedules``), and wait for the confirm."""

    @abc.abstractmethod
    async def peek_latest(self, queue_name: str) -> bytes | None:
        """The message of a queue of :meth:`publish_latest`, left there; None if none."""
