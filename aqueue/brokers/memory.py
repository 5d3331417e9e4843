"""An in-memory broker for tests: the RabbitMQ broker's behaviour, in one process, no network."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Iterable, Iterator

from ..broker import (
    DEFAULT_MAX_MESSAGE_SIZE,
    Broker,
    Consumer,
    Delivery,
    DeliveryHandler,
    QueueInfo,
)
from ..dead_letters import DeadLetter, dead_letter_filter, replay_message
from ..errors import UnroutableError
from ..message import Message
from ..middleware import Middleware
from ..topology import DEAD_LETTER_SUFFIX
from ._memory_groups import MemoryGroups
from ._memory_limits import MemoryLimits
from ._memory_queues import _Envelope, _MemoryConsumer, _MemoryDelivery, _Queue, queue_priority
from ._memory_replies import MemoryReplies

__all__ = ["InMemoryBroker"]

log = logging.getLogger(__name__)


class InMemoryBroker(MemoryReplies, MemoryLimits, MemoryGroups, Broker):
    """A broker that keeps queues in memory, for users' unit tests.

    It offers the same interface and behaviour as :class:`~aqueue.RabbitmqBroker`:
    messages are encoded to JSON and decoded again, sends are validated, prefetch
    bounds what a worker takes, unfinished messages go back to their queue when a
    worker stops, and priorities, retries, delays, time limits, dead letters, callbacks and
    ``call()`` behave the same. Delays run on the real clock; :meth:`fast_forward`
    releases delayed messages at once.

    Args:
        middleware: The middleware stack (default: the same as RabbitmqBroker's).
        max_message_size: Largest message body in bytes, at send and at receive.
    """

    def __init__(
        self,
        *,
        middleware: Iterable[Middleware] | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        super().__init__(middleware=middleware, max_message_size=max_message_size)
        self._queues: dict[str, _Queue] = {}
        self._delayed: list[tuple[float, int, str, _Envelope]] = []  # heap by due time
        self._sequence = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._fast_forward_depth = 0
        self._clock_offset = 0.0  # seconds fast_forward moved the schedules' clock on

    def __repr__(self) -> str:
        return "InMemoryBroker()"

    async def connect(self) -> None:
        """Nothing to connect to; delayed messages kept over a close() are due again."""
        if self._delayed and self._timer is None:
            self._schedule_release()

    async def close(self) -> None:
        """Stop the delivery timer; queued and delayed messages are kept, as in RabbitMQ."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- topology -------------------------------------------------------------------------

    async def declare_queue(self, queue_name: str) -> None:
        """Create ``queue_name`` (and its dead-letter list) if needed."""
        self._queue(queue_name)

    def _queue(self, queue_name: str) -> _Queue:
        queue = self._queues.get(queue_name)
        if queue is None:
            queue = self._queues[queue_name] = _Queue(queue_name)
        return queue

    async def ready_count(self, queue_name: str) -> int:
        """Ready messages in ``queue_name`` (or dead letters, for ``<queue>.XQ``)."""
        info = await self.queue_info(queue_name)
        return 0 if info is None else info.ready

    async def queue_info(self, queue_name: str) -> QueueInfo | None:
        """Ready messages and consumers of a queue, or of ``<queue>.XQ``; None if unknown."""
        if queue_name.endswith(DEAD_LETTER_SUFFIX):
            queue = self._queues.get(queue_name[: -len(DEAD_LETTER_SUFFIX)])
            if queue is None:
                return None
            return QueueInfo(name=queue_name, ready=len(queue.dead), consumers=0)
        queue = self._queues.get(queue_name)
        if queue is None:
            return None
        return QueueInfo(name=queue_name, ready=len(queue.ready), consumers=len(queue.consumers))

    # -- publishing -----------------------------------------------------------------------

    async def _publish_message(self, message: Message, delay: float | None) -> None:
        envelope = _Envelope(
            self._encode(message), message.message_id, priority=queue_priority(self, message)
        )
        await self.declare_queue(message.queue_name)
        if delay:
            due = time.monotonic() + delay
            heapq.heappush(self._delayed, (due, next(self._sequence), message.queue_name, envelope))
            self._schedule_release()
        else:
            self._put(message.queue_name, envelope)

    def _put(self, queue_name: str, envelope: _Envelope, *, front: bool = False) -> None:
        queue = self._queues.get(queue_name)
        if queue is None:
            raise UnroutableError(f"no queue named {queue_name!r}")
        if front:
            queue.ready.appendleft(envelope)
        else:
            queue.ready.append(envelope)
        queue.changed.set()

    def _schedule_release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._delayed:
            loop = asyncio.get_running_loop()
            wait = max(0.0, self._delayed[0][0] - time.monotonic())
            self._timer = loop.call_later(wait, self._release_due)

    def _release_due(self, until: float | None = None) -> int:
        now = time.monotonic() if until is None else until
        if self._timer is not None:
            self._timer.cancel()
        released = 0
        while self._delayed and self._delayed[0][0] <= now:
            _, _, queue_name, envelope = heapq.heappop(self._delayed)
            if queue_name in self._queues:
                self._put(queue_name, envelope)
                released += 1
        self._timer = None
        if self._delayed:
            self._schedule_release()
        return released

    async def fast_forward(self, seconds: float | None = None) -> int:
        """Release now the delayed messages due within ``seconds`` (all when None).

        Retries count as delayed messages, so this also skips their backoff. The clock
        of schedules moves on by ``seconds`` too, and every tick passed fires (once) now,
        before this returns. Returns how many delayed messages were released.
        """
        until = float("inf") if seconds is None else time.monotonic() + seconds
        released = self._release_due(until)
        if seconds is not None and seconds > 0:
            self._clock_offset += seconds
            for listener in list(self._clock_listeners):
                await listener()
        return released

    def _now(self) -> float:
        """The real time, plus every ``fast_forward(seconds)`` so far."""
        return time.time() + self._clock_offset

    async def join(
        self,
        queue_name: str,
        *,
        timeout: float | None = None,
        fail_fast: bool = False,
        poll_interval: float = 0.005,
        fast_forward: bool = False,
    ) -> None:
        """:meth:`Broker.join`; with ``fast_forward=True`` delayed messages and retry
        backoffs are released at once instead of waited for."""
        with self._fast_forwarding(fast_forward):
            await super().join(
                queue_name, timeout=timeout, fail_fast=fail_fast, poll_interval=poll_interval
            )

    async def join_all(
        self, *, timeout: float | None = None, fail_fast: bool = False, fast_forward: bool = False
    ) -> None:
        """:meth:`Broker.join_all`, with ``fast_forward`` as in :meth:`join`."""
        with self._fast_forwarding(fast_forward):
            await super().join_all(timeout=timeout, fail_fast=fail_fast)

    @contextlib.contextmanager
    def _fast_forwarding(self, enabled: bool) -> Iterator[None]:
        self._fast_forward_depth += enabled
        try:
            yield
        finally:
            self._fast_forward_depth -= enabled

    def _coming_back_to(self, queue_name: str) -> bool:
        if self._fast_forward_depth:
            self._release_due(float("inf"))
        return super()._coming_back_to(queue_name)

    @property
    def delayed_count(self) -> int:
        """How many delayed messages (and scheduled retries) wait for their time."""
        return len(self._delayed)

    # -- consuming ------------------------------------------------------------------------

    async def consume(
        self, queue_name: str, *, prefetch: int, handler: DeliveryHandler
    ) -> Consumer:
        """Deliver messages of ``queue_name`` to ``handler``, at most ``prefetch`` unsettled."""
        await self.declare_queue(queue_name)
        consumer = _MemoryConsumer(self, self._queues[queue_name], prefetch, handler)
        consumer.start()
        return consumer

    async def consume_single(self, queue_name: str, *, handler: DeliveryHandler) -> Consumer:
        """:meth:`Broker.consume_single`: the first consumer gets the messages, then the next."""
        await self.declare_queue(queue_name)
        queue = self._queues[queue_name]
        queue.single = True
        consumer = _MemoryConsumer(self, queue, 10, handler)
        consumer.start()
        return consumer

    async def publish_single(self, queue_name: str, body: bytes, *, message_id: str) -> None:
        """:meth:`Broker.publish_single`."""
        await self.declare_queue(queue_name)
        self._queues[queue_name].single = True
        self._put(queue_name, _Envelope(body, message_id))

    async def publish_latest(self, queue_name: str, body: bytes) -> None:
        """:meth:`Broker.publish_latest`."""
        await self.declare_queue(queue_name)
        queue = self._queues[queue_name]
        queue.ready.clear()
        queue.ready.append(_Envelope(body, queue_name))

    async def peek_latest(self, queue_name: str) -> bytes | None:
        """:meth:`Broker.peek_latest`."""
        queue = self._queues.get(queue_name)
        return queue.ready[-1].body if queue is not None and queue.ready else None

    async def dead_letter(
        self, queue_name: str, delivery: Delivery, reason: dict[str, str]
    ) -> None:
        """Keep the delivery's body in the dead-letter list of ``queue_name``, then ack it."""
        assert isinstance(delivery, _MemoryDelivery)
        envelope = delivery.envelope
        self._queue(queue_name).dead.append(
            DeadLetter(body=envelope.body, headers=dict(reason), message_id=envelope.message_id)
        )
        await delivery.ack()

    async def give_back(self, queue_name: str, delivery: Delivery) -> None:
        """Put a copy of the delivery at the end of ``queue_name``, not redelivered; ack it."""
        assert isinstance(delivery, _MemoryDelivery)
        if delivery.settled:
            return
        envelope = delivery.envelope
        self._put(
            queue_name,
            _Envelope(
                envelope.body,
                envelope.message_id,
                dict(envelope.headers),
                priority=envelope.priority,
            ),
        )
        await delivery.ack()

    async def dead_letters(self, queue_name: str, *, limit: int = 100) -> list[DeadLetter]:
        """Up to ``limit`` dead letters of ``queue_name``; they stay where they are."""
        queue = self._queues.get(queue_name)
        return [] if queue is None else list(queue.dead[:limit])

    async def requeue_dead_letters(
        self,
        queue_name: str,
        *,
        message_ids: Iterable[str] | None = None,
        actor_name: str | None = None,
        limit: int | None = None,
    ) -> int:
        """Send dead letters back to ``queue_name`` with their retry count reset."""
        select = dead_letter_filter(message_ids=message_ids, actor_name=actor_name)
        queue = self._queue(queue_name)
        requeued = 0
        kept: list[DeadLetter] = []
        for letter in queue.dead:
            if (limit is not None and requeued >= limit) or not select(letter):
                kept.append(letter)
                continue
            try:
                message = replay_message(letter, queue_name)
            except ValueError:
                kept.append(letter)
                continue
            await self._publish_message(message, None)
            requeued += 1
        queue.dead = kept
        return requeued

    async def purge_dead_letters(
        self,
        queue_name: str,
        *,
        message_ids: Iterable[str] | None = None,
        older_than: float | None = None,
    ) -> int:
        """Delete the selected dead letters of ``queue_name``; returns how many."""
        select = dead_letter_filter(message_ids=message_ids, older_than=older_than)
        queue = self._queue(queue_name)
        kept = [letter for letter in queue.dead if not select(letter)]
        purged = len(queue.dead) - len(kept)
        queue.dead = kept
        return purged
