"""Task events: each message's outcome, published in batches for the dashboard's history.

Off by default. Switch it on in the module the workers load::

    broker.add_middleware(aqueue.middleware.TaskEvents())

(after the default middleware, so that it sees whether a retry was scheduled). Each
worker process buffers its events and hands them to the broker in batches, one per
``flush_interval`` (and a heartbeat every ``heartbeat_interval`` seconds while idle, so
the dashboard knows the process is alive). On RabbitMQ a batch is one confirmed message
of a stream that keeps ``max_age`` and at most ``max_bytes``
(``aqueue.brokers.rabbitmq.events``); the dashboard reads it without removing anything,
so history survives a dashboard restart.

A broker without an event stream (``InMemoryBroker``) publishes nothing: the batches
with events stay on the middleware, the latest ``KEPT_BATCHES`` in :attr:`TaskEvents.batches`,
for tests to look at.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import msgspec

from .base import Middleware

if TYPE_CHECKING:
    from ..broker import Broker
    from ..context import MessageContext
    from ..message import Message
    from ..worker import Worker

__all__ = [
    "BATCH_DECODER",
    "EVENTS_STREAM",
    "Batch",
    "Event",
    "EventPublishing",
    "TaskEvents",
]

log = logging.getLogger("aqueue.events")

#: The stream the events go to unless told otherwise.
EVENTS_STREAM = "aqueue.events"
#: Events kept in memory at most while the stream cannot be reached (older ones dropped).
MAX_BUFFERED = 10_000
#: Batches kept by a middleware whose broker has no event stream.
KEPT_BATCHES = 1000


class Event(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One outcome: ``succeeded``, ``retried``, ``failed`` (dead-lettered) or ``skipped``."""

    outcome: str
    actor: str
    queue: str
    message_id: str
    at: float  # when it finished, seconds since the epoch
    duration: float | None = None  # seconds the actor ran
    retries: int = 0
    exception: str | None = None
    error: str | None = None

    def asdict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__struct_fields__}


class Batch(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What one stream message carries: a worker process and its events since the last."""

    v: int = 1
    host: str
    pid: int
    at: float
    queues: list[str] = []
    events: list[Event] = []


_ENCODER = msgspec.json.Encoder()
BATCH_DECODER = msgspec.json.Decoder(Batch)


@runtime_checkable
class EventPublishing(Protocol):
    """A broker that can publish task events (RabbitMQ: to a stream)."""

    async def publish_events(
        self, stream: str, body: bytes, *, max_age: str, max_bytes: int
    ) -> None: ...


class TaskEvents(Middleware):
    """Publish each message's outcome to the events stream, in batches.

    Attributes:
        batches: With a broker that has no event stream (``InMemoryBroker``), the latest
            batches that carried events; empty otherwise.

    Args:
        stream: The stream's name.
        flush_interval: Seconds between batches (events wait at most this long).
        heartbeat_interval: Seconds between batches of an idle worker.
        max_age: How long the stream keeps events (RabbitMQ's ``x-max-age``: ``7D``, ``12h``).
        max_bytes: How large the stream may grow (``x-max-length-bytes``).
    """

    def __init__(
        self,
        stream: str = EVENTS_STREAM,
        *,
        flush_interval: float = 1.0,
        heartbeat_interval: float = 10.0,
        max_age: str = "7D",
        max_bytes: int = 200 * 1024 * 1024,
    ) -> None:
        self.stream = stream
        self.flush_interval = flush_interval
        self.heartbeat_interval = heartbeat_interval
        self.max_age = max_age
        self.max_bytes = max_bytes
        self._buffer: list[Event] = []
        self._started: dict[int, float] = {}  # id(context) -> monotonic start
        self._task: asyncio.Task[None] | None = None
        self._broker: Broker | None = None
        self._queues: list[str] = []
        self._last_sent = 0.0
        self._lock = asyncio.Lock()
        self.batches: collections.deque[Batch] = collections.deque(maxlen=KEPT_BATCHES)

    async def before_process_message(self, context: MessageContext) -> None:
        self._started[id(context)] = time.monotonic()

    async def after_process_message(self, context: MessageContext) -> None:
        started = self._started.pop(id(context), None)
        duration = None if started is None else time.monotonic() - started
        exception = context.exception
        if exception is None:
            outcome = "succeeded"
        elif context.retry_scheduled:
            outcome = "retried"
        else:
            outcome = "failed"
        self._add(context.message, outcome, duration, exception)

    async def after_skip_message(self, context: MessageContext) -> None:
        self._started.pop(id(context), None)
        reason = context.skip.reason if context.skip is not None else None
        self._add(context.message, "skipped", None, None, error=reason)

    async def after_reject_message(
        self, broker: Broker, message: Message, error: Exception, reason: str
    ) -> None:
        self._add(message, "failed", None, error)  # dead-lettered without running

    def _add(
        self,
        message: Message,
        outcome: str,
        duration: float | None,
        exception: BaseException | None,
        *,
        error: str | None = None,
    ) -> None:
        retries = message.options.get("retries", 0)
        self._buffer.append(
            Event(
                outcome=outcome,
                actor=message.actor_name,
                queue=message.queue_name,
                message_id=message.message_id,
                at=time.time(),
                duration=None if duration is None else round(duration, 6),
                retries=retries if isinstance(retries, int) else 0,
                exception=None if exception is None else type(exception).__name__,
                error=str(exception)[:500] if exception is not None else error,
            )
        )
        if len(self._buffer) > MAX_BUFFERED:
            del self._buffer[: len(self._buffer) - MAX_BUFFERED]

    async def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        self._broker = broker
        self._queues = sorted(worker.consuming_queues)
        if not isinstance(broker, EventPublishing):
            log.info(
                "task events: %r has no event stream; batches are kept in memory "
                "(TaskEvents.batches)",
                broker,
            )
        self._task = asyncio.create_task(self._run(), name="aqueue-task-events")

    async def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        task, self._task = self._task, None
        if task is not None:
            # A batch being published finishes first: cancelled half way, it would be kept
            # and sent again by the last flush below (each event twice in the history).
            try:
                await asyncio.wait_for(self._lock.acquire(), 5.0)
                acquired = True
            except asyncio.TimeoutError:
                acquired = False
            task.cancel()
            if acquired:
                self._lock.release()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), 5.0)

    async def _run(self) -> None:
        delay = self.flush_interval
        while True:
            await asyncio.sleep(delay)
            try:
                await self.flush()
                delay = self.flush_interval
            except Exception as exc:  # the stream is away: keep the events, try again later
                delay = min(max(delay * 2, 1.0), 30.0)
                log.warning("task events: publishing failed (%s); again in %.0f s", exc, delay)

    async def flush(self) -> None:
        """Publish the buffered events (or a heartbeat when one is due) as one batch."""
        async with self._lock:
            await self._flush()

    async def _flush(self) -> None:
        broker = self._broker
        if broker is None:
            return
        due = (
            isinstance(broker, EventPublishing)
            and time.monotonic() - self._last_sent >= self.heartbeat_interval
        )
        if not self._buffer and not due:
            return
        events, self._buffer = self._buffer, []
        batch = Batch(
            host=socket.gethostname(),
            pid=os.getpid(),
            at=time.time(),
            queues=self._queues,
            events=events,
        )
        if not isinstance(broker, EventPublishing):
            self.batches.append(batch)
            return
        try:
            await broker.publish_events(
                self.stream,
                _ENCODER.encode(batch),
                max_age=self.max_age,
                max_bytes=self.max_bytes,
            )
        except BaseException:
            # Not published (or not known to be): kept for the next batch.
            self._buffer[:0] = events
            raise
        self._last_sent = time.monotonic()
