"""The in-memory broker's queues, consumers and deliveries."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..broker import DeliveryHandler
from ..dead_letters import DeadLetter
from ..middleware.priorities import max_priority_of, priority_of

if TYPE_CHECKING:
    from ..message import Message
    from .memory import InMemoryBroker

log = logging.getLogger("aqueue.brokers.memory")


@dataclass
class _Envelope:
    body: bytes
    message_id: str | None
    headers: dict[str, str] = field(default_factory=dict)
    redelivered: bool = False
    #: Its priority in its queue (0 in a queue without priorities).
    priority: int = 0


def queue_priority(broker: InMemoryBroker, message: Message) -> int:
    """The priority ``message`` has in its queue, as RabbitMQ ranks it: none (0) in a queue
    whose actors set no ``max_priority``, and at most the queue's maximum."""
    priority = priority_of(broker, message)
    if not priority:
        return 0
    maximum = max_priority_of(broker, message.queue_name)
    return 0 if maximum is None else min(priority, maximum)


class _Ready:
    """A queue's ready messages: higher priority first, FIFO within a priority.

    The deque operations the broker uses: ``append`` at the end of the message's
    priority, ``appendleft`` at its front (a requeued delivery), ``popleft`` the next one.
    """

    __slots__ = ("_levels",)

    def __init__(self) -> None:
        self._levels: dict[int, collections.deque[_Envelope]] = {}

    def _level(self, envelope: _Envelope) -> collections.deque[_Envelope]:
        level = self._levels.get(envelope.priority)
        if level is None:
            level = self._levels[envelope.priority] = collections.deque()
            self._levels = dict(sorted(self._levels.items(), reverse=True))
        return level

    def append(self, envelope: _Envelope) -> None:
        self._level(envelope).append(envelope)

    def appendleft(self, envelope: _Envelope) -> None:
        self._level(envelope).appendleft(envelope)

    def popleft(self) -> _Envelope:
        for level in self._levels.values():
            if level:
                return level.popleft()
        raise IndexError("pop from an empty queue")

    def clear(self) -> None:
        self._levels.clear()

    def __iter__(self) -> Iterator[_Envelope]:
        for level in self._levels.values():
            yield from level

    def __len__(self) -> int:
        return sum(len(level) for level in self._levels.values())

    def __bool__(self) -> bool:
        return any(self._levels.values())

    def __getitem__(self, index: int) -> _Envelope:
        return list(self)[index]


class _Queue:
    def __init__(self, name: str) -> None:
        self.name = name
        self.ready = _Ready()
        self.dead: list[DeadLetter] = []
        self.consumers: list[_MemoryConsumer] = []
        self.changed = asyncio.Event()
        #: One active consumer at a time gets the messages (``consume_single``).
        self.single = False


class _MemoryDelivery:
    __slots__ = ("_consumer", "_settled", "envelope")

    def __init__(self, consumer: _MemoryConsumer, envelope: _Envelope) -> None:
        self._consumer = consumer
        self.envelope = envelope
        self._settled = False

    @property
    def body(self) -> bytes:
        return self.envelope.body

    @property
    def redelivered(self) -> bool:
        return self.envelope.redelivered

    @property
    def message_id(self) -> str | None:
        return self.envelope.message_id

    @property
    def lost(self) -> bool:
        return self._consumer.closed and not self._settled

    @property
    def settled(self) -> bool:
        return self._settled or self._consumer.closed  # a closed consumer gave it back

    async def ack(self) -> None:
        if self._settle():
            self._consumer.settled(self)

    async def requeue(self) -> None:
        if self._settle():
            self._consumer.settled(self)
            self.envelope.redelivered = True
            self._consumer.broker._put(self._consumer.queue.name, self.envelope, front=True)

    def _settle(self) -> bool:
        if self._settled or self._consumer.closed:
            return False  # a closed consumer already gave the message back
        self._settled = True
        return True


class _MemoryConsumer:
    def __init__(
        self, broker: InMemoryBroker, queue: _Queue, prefetch: int, handler: DeliveryHandler
    ) -> None:
        self.broker = broker
        self.queue = queue
        self._handler = handler
        self._slots = asyncio.Semaphore(prefetch)
        self._unsettled: dict[_MemoryDelivery, None] = {}  # in delivery order
        self._task: asyncio.Task[None] | None = None
        self.closed = False

    @property
    def consuming(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        self.queue.consumers.append(self)
        self._task = asyncio.ensure_future(self._deliver())

    async def _deliver(self) -> None:
        while True:
            await self._slots.acquire()
            queue = self.queue
            while not queue.ready or (queue.single and queue.consumers[0] is not self):
                queue.changed.clear()
                await queue.changed.wait()
            delivery = _MemoryDelivery(self, self.queue.ready.popleft())
            self._unsettled[delivery] = None
            task = asyncio.ensure_future(self._handler(delivery))
            task.add_done_callback(_log_handler_failure)

    def settled(self, delivery: _MemoryDelivery) -> None:
        self._unsettled.pop(delivery, None)
        self._slots.release()

    async def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self in self.queue.consumers:
            self.queue.consumers.remove(self)
            self.queue.changed.set()  # the next single active consumer may take over

    async def close(self) -> None:
        await self.cancel()
        if self.closed:
            return
        self.closed = True
        # As when a channel closes: what was not settled goes back to the queue, in order.
        for delivery in reversed(list(self._unsettled)):
            delivery.envelope.redelivered = True
            self.broker._put(self.queue.name, delivery.envelope, front=True)
        self._unsettled.clear()


def _log_handler_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("delivery handler failed", exc_info=task.exception())
