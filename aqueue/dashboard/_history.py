"""Task history: the events stream read from ``history_window`` ago, then followed live.

A stream is read without removing anything (acks only give credit), so a restarted
dashboard reads the same history again. The dashboard reads it on a connection of its
own, named ``aqueue dashboard <host> pid <pid>``; offsets already seen are skipped after
a reconnect. What is read is kept in memory, bounded by ``keep`` events.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import socket
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

import aio_pika
import msgspec
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from ..broker import Broker
from ..middleware.events import BATCH_DECODER, Event

__all__ = ["ActorStats", "History", "Process"]

log = logging.getLogger("aqueue.dashboard")


@dataclass
class Process:
    """A worker process as its event batches show it."""

    host: str
    pid: int
    queues: list[str]
    first_seen: float
    last_seen: float
    events: int = 0

    def asdict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ActorStats:
    """One actor's outcomes in the history kept."""

    actor: str
    succeeded: int
    failed: int
    retried: int
    skipped: int
    mean_duration: float | None
    p95_duration: float | None
    last_at: float

    def asdict(self) -> dict[str, Any]:
        return asdict(self)


class History:
    """The events of ``stream`` (None: history off) over the last ``window`` seconds."""

    def __init__(
        self, broker: Broker, *, stream: str | None, window: float, keep: int = 20_000
    ) -> None:
        self.broker = broker
        self.stream = stream
        self.window = window
        self.events: deque[Event] = deque(maxlen=keep)
        self.unavailable: str | None = (
            "history is off (no events stream given)" if stream is None else "not read yet"
        )
        self._processes: dict[tuple[str, int], Process] = {}
        self._keep = keep
        # Events are published at least once (a batch whose confirm was lost is sent again):
        # the last ``keep`` events read, in order, so that a copy is counted once.
        self._seen: dict[tuple[str, str, int, float], None] = {}
        self._last_offset = -1
        self._connection: AbstractRobustConnection | None = None
        self.loaded = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Read the stream until ``stop`` is set; a failure is shown and retried with backoff."""
        from ..brokers.rabbitmq import RabbitmqBroker

        if self.stream is None:
            return
        if not isinstance(self.broker, RabbitmqBroker):
            self.unavailable = "history needs a RabbitMQ broker"
            return
        delay = 1.0
        while not stop.is_set():
            try:
                await self._follow(self.broker.urls[0], self.stream, stop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.unavailable = (
                    f"cannot read stream {self.stream!r}: {type(exc).__name__}: {exc}"
                )
                log.warning("dashboard: %s; again in %.0f s", self.unavailable, delay)
                await self.close()
                with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, 60.0)
        await self.close()

    async def _follow(self, url: str, stream: str, stop: asyncio.Event) -> None:
        name = f"aqueue dashboard {socket.gethostname()} pid {os.getpid()}"
        self._connection = await aio_pika.connect_robust(
            url, client_properties={"connection_name": name}
        )
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=500)
        try:
            queue = await channel.declare_queue(stream, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            raise RuntimeError(
                "it does not exist yet: workers create it once they run with "
                "aqueue.middleware.TaskEvents"
            ) from None
        start = datetime.datetime.fromtimestamp(time.time() - self.window, datetime.timezone.utc)
        await queue.consume(self._on_message, arguments={"x-stream-offset": start})
        self.unavailable = None
        # Reading the backlog: done when no message came for a moment.
        await asyncio.sleep(0.5)
        self.loaded.set()
        await stop.wait()  # the robust connection consumes again after a reconnect

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        offset = (message.headers or {}).get("x-stream-offset")
        await message.ack()
        if isinstance(offset, int):
            if offset <= self._last_offset:
                return  # read again after a reconnect
            self._last_offset = offset
        try:
            batch = BATCH_DECODER.decode(message.body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        key = (batch.host, batch.pid)
        process = self._processes.get(key)
        if process is None:
            process = self._processes[key] = Process(
                batch.host, batch.pid, batch.queues, batch.at, batch.at
            )
        process.queues = batch.queues or process.queues
        process.last_seen = max(process.last_seen, batch.at)
        for event in batch.events:
            seen = (event.message_id, event.outcome, event.retries, event.at)
            if seen in self._seen:
                continue
            self._seen[seen] = None
            if len(self._seen) > self._keep:
                del self._seen[next(iter(self._seen))]
            process.events += 1
            self.events.append(event)

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed:
            await connection.close()

    def processes(self) -> list[Process]:
        """Worker processes seen in the events, the most recently seen first."""
        return sorted(self._processes.values(), key=lambda p: -p.last_seen)

    def recent(
        self, *, actor: str | None = None, outcome: str | None = None, limit: int = 200
    ) -> list[Event]:
        """The latest events, newest first, of ``actor`` and ``outcome`` if given."""
        found: list[Event] = []
        for event in reversed(self.events):
            if (actor is None or event.actor == actor) and (
                outcome is None or event.outcome == outcome
            ):
                found.append(event)
                if len(found) >= limit:
                    break
        return found

    def stats(self) -> list[ActorStats]:
        """Outcomes and durations per actor over the events kept."""
        by_actor: dict[str, list[Event]] = {}
        for event in self.events:
            by_actor.setdefault(event.actor, []).append(event)
        result = []
        for actor, events in sorted(by_actor.items()):
            counts = {o: 0 for o in ("succeeded", "failed", "retried", "skipped")}
            for event in events:
                counts[event.outcome] = counts.get(event.outcome, 0) + 1
            durations = sorted(e.duration for e in events if e.duration is not None)
            result.append(
                ActorStats(
                    actor=actor,
                    succeeded=counts["succeeded"],
                    failed=counts["failed"],
                    retried=counts["retried"],
                    skipped=counts["skipped"],
                    mean_duration=sum(durations) / len(durations) if durations else None,
                    p95_duration=durations[int(0.95 * (len(durations) - 1))] if durations else None,
                    last_at=max(e.at for e in events),
                )
            )
        return result
