"""The scheduler: fires each tick of a broker's schedules once, across every process.

Every process that runs the scheduler consumes, for each schedule, the lease queue
``aqueue.schedule.<name>``: a durable queue with a single active consumer. It holds one
lease message with the last tick fired. RabbitMQ delivers it to one consumer at a time
and, when that consumer goes (its process dies, its connection drops), to the next one,
which thereby becomes the active scheduler of that schedule and goes on from the last
tick the lease names. The active one:

1. publishes the message of a due tick (deterministic id: ``<name>@<tick>``), confirmed;
2. publishes a new lease naming that tick, confirmed;
3. acks the lease it held; the new one is delivered to it again (it stays active).

A crash between 1 and 2 fires that tick again from the next scheduler, with the same
message id; nothing is ever lost between them. The lease is renewed at least every
``RENEW_EVERY`` seconds, so it is never held unacknowledged as long as RabbitMQ's
``consumer_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import uuid
from collections.abc import Callable

import msgspec

from ._schedule_state import (
    Lease,
    ScheduleStatus,
    decode_lease,
    encode_json,
    holder_name,
    iso_utc,
    lease_queue_name,
    parse_tick,
    read_status,
    status_queue_name,
)
from .broker import Broker, Consumer, Delivery
from .schedules import Schedule, tick_id

__all__ = [
    "RENEW_EVERY",
    "ScheduleStatus",
    "Scheduler",
    "lease_queue_name",
    "read_status",
    "status_queue_name",
]

log = logging.getLogger("aqueue.scheduler")

#: Seconds between renewals of a held lease when no tick fires meanwhile.
RENEW_EVERY = 60.0
#: Seconds the active scheduler waits for its renewed lease to come back before it steps down.
LEASE_RETURN_TIMEOUT = 10.0
#: At most this many ticks are fired (or skipped) in one pass: a bound for tiny periods.
MAX_TICKS_PER_PASS = 1000
#: Seconds ``start()`` waits for the lease when no other scheduler runs the schedule.
START_WAIT = 2.0
#: Longest sleep of the loop, so that a lost lease or a stop is noticed soon.
_POLL = 1.0

_UTC = datetime.timezone.utc


class Scheduler:
    """Runs the schedules of ``broker`` (all of them, or ``names``) in this process.

    Of all the processes that run a schedule, one at a time is its active scheduler
    and fires its ticks; the others stand by and take over within seconds when it goes.

    Args:
        broker: The broker whose schedules to run.
        names: Only these schedules (default: every schedule of the broker).
        listener: Told ``(schedule_name, event)`` for "active", "standby", "fired" and
            "skipped" (used for metrics and tests).
    """

    def __init__(
        self,
        broker: Broker,
        names: list[str] | None = None,
        *,
        listener: Callable[[str, str], None] | None = None,
    ) -> None:
        self.broker = broker
        schedules = broker.schedules
        unknown = [n for n in names or [] if n not in schedules]
        if unknown:
            raise ValueError(f"no schedule named {', '.join(map(repr, unknown))} on {broker!r}")
        chosen = list(schedules) if names is None else names
        self._listeners: list[Callable[[str, str], None]] = [] if listener is None else [listener]
        self._runners = [_ScheduleRunner(broker, schedules[n], self._tell) for n in chosen]
        self._forget_clock: Callable[[], None] | None = None

    def _tell(self, schedule_name: str, event: str) -> None:
        for listener in list(self._listeners):
            listener(schedule_name, event)

    def add_listener(self, listener: Callable[[str, str], None]) -> Callable[[], None]:
        """Have ``listener(schedule_name, event)`` called on each event; returns its remover."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    @property
    def active(self) -> dict[str, bool]:
        """Each schedule run here and whether this process is its active scheduler now."""
        return {r.schedule.name: r.leading for r in self._runners}

    async def start(self) -> None:
        """Subscribe to every schedule's lease (the broker connects if needed)."""
        self._forget_clock = self.broker._add_clock_listener(self.catch_up)
        try:
            for runner in self._runners:
                await runner.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop firing and give the leases back, so another process takes over at once."""
        if self._forget_clock is not None:
            self._forget_clock()
            self._forget_clock = None
        await asyncio.gather(*(runner.stop() for runner in self._runners))

    async def catch_up(self) -> None:
        """Fire now every tick due by the broker's clock (the in-memory broker's
        ``fast_forward`` calls this: each tick passed fires, none is skipped)."""
        for runner in self._runners:
            await runner.fire_due(catching_up=True)


class _ScheduleRunner:
    def __init__(
        self, broker: Broker, schedule: Schedule, listener: Callable[[str, str], None] | None
    ) -> None:
        self.broker = broker
        self.schedule = schedule
        self.queue_name = lease_queue_name(schedule.name)
        self._listener = listener
        self._consumer: Consumer | None = None
        self._held: list[Delivery] = []
        self._last: datetime.datetime | None = None
        self._previous_holder = ""
        self._leading = False
        self._leading_since = 0.0  # by the broker's clock
        self._stopping = False
        self._lease_arrived = asyncio.Event()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._firing = asyncio.Lock()

    @property
    def leading(self) -> bool:
        return self._leading and not self._lease_lost()

    def _tell(self, event: str) -> None:
        if self._listener is not None:
            self._listener(self.schedule.name, event)

    async def start(self) -> None:
        self._stopping = False
        self._consumer = await self.broker.consume_single(self.queue_name, handler=self._on_lease)
        info = await self.broker.queue_info(self.queue_name)
        if info is not None and info.ready == 0 and not self._held:
            # No lease waits: the first scheduler ever, or one holds it now. A lease too
            # many is harmless: the active scheduler merges what it holds.
            await self._publish_lease(None)
        if info is not None and info.consumers <= 1:
            # Alone: the lease comes to this process. Wait for it (briefly), so that the
            # worker's first log line is right and the clock starts from here.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._lease_arrived.wait(), START_WAIT)

    async def stop(self) -> None:
        self._stopping = True
        was_leading = self._leading
        self._wake.set()
        task, self._loop_task = self._loop_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            # Closing gives the held lease back to the queue: the next scheduler takes over.
            await consumer.close()
        self._leading = False
        if was_leading:
            log.info("schedule %s: no longer the active scheduler (stopping)", self.schedule.name)
            self._tell("standby")
        self._held.clear()

    # -- the lease ------------------------------------------------------------------------

    async def _on_lease(self, delivery: Delivery) -> None:
        try:
            lease = decode_lease(delivery.body)
            last = parse_tick(lease.last_tick)
        except (msgspec.DecodeError, ValueError) as exc:
            log.warning("schedule %s: dropping a lease that is not one (%s)", self.queue_name, exc)
            await delivery.ack()
            return
        if self._stopping:
            await delivery.requeue()
            return
        if last is not None and (self._last is None or last > self._last):
            self._last = last
            self._previous_holder = lease.holder
        self._held = [d for d in self._held if not d.lost]
        self._held.append(delivery)
        self._lease_arrived.set()
        if not self._leading or self._loop_task is None or self._loop_task.done():
            self._leading = True
            self._leading_since = self.broker._now()
            log.info(
                "schedule %s (%s): this process is now its active scheduler; last tick fired %s%s",
                self.schedule.name,
                self.schedule.describe(),
                "never" if self._last is None else tick_id(self._last),
                f" by {self._previous_holder}" if self._previous_holder else "",
            )
            self._tell("active")
            self._loop_task = asyncio.ensure_future(self._lead())

    def _lease_lost(self) -> bool:
        return any(d.lost for d in self._held)

    async def _publish_lease(self, last: datetime.datetime | None) -> None:
        lease = Lease(
            schedule=self.schedule.name,
            last_tick=None if last is None else tick_id(last),
            holder=holder_name(),
        )
        await self.broker.publish_single(
            self.queue_name, encode_json(lease), message_id=str(uuid.uuid4())
        )

    async def _renew(self) -> None:
        """Publish the lease as it is now, then ack what this process held."""
        held, self._held = self._held, []
        self._lease_arrived.clear()
        try:
            await self._publish_lease(self._last)
        except BaseException:
            self._held = held + self._held
            raise
        for delivery in held:
            await delivery.ack()
        status = ScheduleStatus(
            schedule=self.schedule.name,
            holder=holder_name(),
            active_since=iso_utc(self._leading_since),
            last_tick=None
            if self._last is None or not self._is_tick(self._last)
            else tick_id(self._last),
            updated=iso_utc(self.broker._now()),
        )
        try:
            await self.broker.publish_latest(
                status_queue_name(self.schedule.name), encode_json(status)
            )
        except Exception as exc:  # only what `aqueue schedules` shows: never stop firing for it
            log.debug("schedule %s: could not write its status: %r", self.schedule.name, exc)

    # -- leading --------------------------------------------------------------------------

    async def _lead(self) -> None:
        name = self.schedule.name
        renewed = self.broker._now()
        try:
            while not self._stopping:
                if self._lease_lost():
                    break
                if not self._held:
                    try:
                        await asyncio.wait_for(self._lease_arrived.wait(), LEASE_RETURN_TIMEOUT)
                    except asyncio.TimeoutError:
                        log.warning(
                            "schedule %s: the renewed lease did not come back within %.0f s; "
                            "standing by",
                            name,
                            LEASE_RETURN_TIMEOUT,
                        )
                        break
                    continue
                fired = await self.fire_due()
                now = self.broker._now()
                if fired:
                    renewed = now
                elif now - renewed >= RENEW_EVERY:
                    await self._renew()
                    renewed = now
                    continue
                upcoming = self.schedule.next_tick(self._reference(now))
                wait = min(_POLL, max(0.0, upcoming.timestamp() - now))
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("schedule %s: the scheduler failed (%r); standing by", name, exc)
        finally:
            if self._leading and not self._stopping:
                log.warning(
                    "schedule %s: this process lost the lease (connection lost?); another "
                    "scheduler takes over",
                    name,
                )
                self._tell("standby")
            self._leading = False

    def _is_tick(self, moment: datetime.datetime) -> bool:
        """Whether ``moment`` is a tick (not where a first run started from)."""
        return self.schedule.next_tick(moment - datetime.timedelta(microseconds=1)) == moment

    def _reference(self, now: float) -> datetime.datetime:
        """The time after which the next tick is due: the last tick, or now if none."""
        if self._last is not None:
            return self._last
        return datetime.datetime.fromtimestamp(now, _UTC)

    async def fire_due(self, *, catching_up: bool = False) -> bool:
        """Fire the ticks due by now; True if one was fired or skipped (the lease renewed)."""
        if catching_up and self.leading and not self._held:
            # The renewed lease is on its way back: wait for it rather than miss the jump.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._lease_arrived.wait(), START_WAIT)
        if not self.leading or not self._held:
            return False
        async with self._firing:
            now = self.broker._now()
            now_dt = datetime.datetime.fromtimestamp(now, _UTC)
            last = self._last
            first = last is None
            if last is None:
                # A schedule's first run: nothing before this process took the lease is due.
                last = self._last = datetime.datetime.fromtimestamp(self._leading_since, _UTC)
            due: list[datetime.datetime] = []
            tick = self.schedule.next_tick(last)
            while tick <= now_dt and len(due) < MAX_TICKS_PER_PASS:
                due.append(tick)
                tick = self.schedule.next_tick(tick)
            if not due:
                if first:  # keep where it starts from, should this process go
                    await self._renew()
                    return True
                return False
            grace = self.schedule.misfire_grace
            # Skipped: ticks missed while no scheduler could fire them (before this one took
            # the lease), older than misfire_grace. A tick due since is never skipped.
            oldest = self._leading_since - grace
            late = [] if catching_up else [t for t in due if t.timestamp() < oldest]
            if late:
                log.warning(
                    "schedule %s: skipped %d tick(s) from %s to %s, more than misfire_grace "
                    "(%.0f s) old when a scheduler could fire them",
                    self.schedule.name,
                    len(late),
                    tick_id(late[0]),
                    tick_id(late[-1]),
                    grace,
                )
                for _ in late:
                    self._tell("skipped")
            for t in due:
                if t not in late:
                    if self._lease_lost():
                        return False
                    await self._fire(t)
                self._last = t
            await self._renew()
            return True

    async def _fire(self, tick: datetime.datetime) -> None:
        message = self.schedule.message(tick)
        await self.broker.enqueue(message)
        log.debug("schedule %s: fired tick %s", self.schedule.name, tick_id(tick))
        self._tell("fired")
