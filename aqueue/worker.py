"""The worker: consumes queues and runs actors, async ones on the loop, blocking ones in threads."""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import anyio
import msgspec

from . import _failures
from ._deadlines import DeadlineExceeded, Deadlines
from ._threads import run_in_thread
from .actor import Actor
from .broker import CORE_ACTOR_OPTIONS, Broker, Consumer, Delivery
from .context import MessageContext, _current
from .errors import (
    ActorNotFound,
    MessageDecodeError,
    TimeLimitExceeded,
    ValidationError,
    WorkerError,
)
from .message import Message
from .middleware import Middleware, SkipMessage, TimeLimit
from .middleware.base import overrides

__all__ = ["Worker"]

log = logging.getLogger(__name__)


class MessageTooLarge(Exception):
    """A delivery's body is larger than the broker's max_message_size."""


class _NotStarted(Exception):
    """The worker began to stop while a delivery waited for a free slot."""


@dataclass
class _QueuePlan:
    name: str
    actors: list[Actor[Any, Any]]
    prefetch: int
    # Per-actor limits, only where prefetch alone does not bound an actor.
    limiters: dict[str, anyio.CapacityLimiter] = field(default_factory=dict)


class Worker:
    """Consumes queues of a broker and runs their actors.

    ``async def`` actors run on the event loop; plain ``def`` actors run in a
    bounded thread pool, so the loop (and the connection's heartbeats) never wait
    on them. A message is acknowledged only after its actor returned, or after it
    was dead-lettered.

    Args:
        broker: The broker whose actors to run.
        queues: Queues to consume (default: every queue that has an actor).
        concurrency: Default for ``async def`` actors without their own
            ``concurrency``: how many of one actor's messages run at once.
        threads: Size of the thread pool for blocking actors (also their default
            concurrency).
        shutdown_timeout: Seconds ``stop()`` lets running actors finish before it
            requeues what is left.
    """

    def __init__(
        self,
        broker: Broker,
        *,
        queues: Iterable[str] | None = None,
        concurrency: int = 100,
        threads: int = 8,
        shutdown_timeout: float = 30.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self.broker = broker
        self.queues = None if queues is None else list(dict.fromkeys(queues))
        self.concurrency = concurrency
        self.threads = threads
        self.shutdown_timeout = shutdown_timeout
        self._plans: list[_QueuePlan] = []
        self._consumers: list[Consumer] = []
        self._running: set[asyncio.Task[Any]] = set()
        self._waiting: set[anyio.CancelScope] = set()
        self._idle: asyncio.Event | None = None
        self._force: asyncio.Event | None = None
        self._stopping = False
        self._started = False
        self._thread_slots = anyio.CapacityLimiter(threads)
        self._thread_pool = anyio.CapacityLimiter(threads)
        self._before_process: list[Middleware] = []
        self._after_process: list[Middleware] = []
        self._after_skip: list[Middleware] = []
        self._time_limit: TimeLimit | None = None
        self._message_options: frozenset[str] = frozenset()
        self._deadlines = Deadlines()

    # -- lifecycle ------------------------------------------------------------------------

    def plan(self) -> list[_QueuePlan]:
        """Work out queues, prefetch counts and limits; WorkerError if there is nothing to run."""
        by_queue: dict[str, list[Actor[Any, Any]]] = {}
        for actor in self.broker.actors.values():
            by_queue.setdefault(actor.queue_name, []).append(actor)
        if not by_queue:
            raise WorkerError("the broker has no actors; import the modules that declare them")
        names = self.queues if self.queues is not None else sorted(by_queue)
        unknown = [q for q in names if q not in by_queue]
        if unknown:
            raise WorkerError(
                f"no actor uses queue{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                f"(queues with actors: {', '.join(sorted(by_queue))})"
            )
        plans = []
        for name in names:
            actors = by_queue[name]
            plan = _QueuePlan(name=name, actors=actors, prefetch=0)
            for actor in actors:
                limit = self._concurrency_of(actor)
                plan.prefetch += self._prefetch_of(actor, limit)
                if len(actors) > 1:
                    plan.limiters[actor.actor_name] = anyio.CapacityLimiter(limit)
            plans.append(plan)
        return plans

    def _concurrency_of(self, actor: Actor[Any, Any]) -> int:
        if actor.is_async:
            return actor.concurrency or self.concurrency
        return min(actor.concurrency or self.threads, self.threads)

    def _prefetch_of(self, actor: Actor[Any, Any], limit: int) -> int:
        if actor.is_async or actor.concurrency is not None:
            return limit
        # A blocking actor on the default concurrency takes a few messages more than it
        # has threads, so that a thread that finishes finds its next message here instead
        # of waiting a round trip to RabbitMQ; the thread pool still bounds what runs.
        return limit + max(1, self.threads // 4)

    async def start(self) -> None:
        """Connect, declare the queues and start consuming."""
        if self._started:
            return
        self._plans = self.plan()
        self._idle = asyncio.Event()
        self._idle.set()
        self._force = asyncio.Event()
        self._stopping = False
        stack = self.broker.middleware
        self._before_process = [m for m in stack if overrides(m, "before_process_message")]
        self._after_process = [m for m in stack if overrides(m, "after_process_message")]
        self._after_skip = [m for m in stack if overrides(m, "after_skip_message")]
        self._time_limit = next((m for m in stack if isinstance(m, TimeLimit)), None)
        self._message_options = self.broker.actor_options - CORE_ACTOR_OPTIONS
        await self.broker.connect()
        for m in stack:
            await m.before_worker_boot(self.broker, self)
        # All queues at once: each consumer opens a channel of its own.
        results = await asyncio.gather(
            *(
                self.broker.consume(
                    plan.name, prefetch=plan.prefetch, handler=functools.partial(self._handle, plan)
                )
                for plan in self._plans
            ),
            return_exceptions=True,
        )
        self._consumers = [c for c in results if not isinstance(c, BaseException)]
        failures = [c for c in results if isinstance(c, BaseException)]
        if failures:
            await self._close_consumers()
            raise failures[0]
        self._started = True
        for m in stack:
            await m.after_worker_boot(self.broker, self)

    async def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully: stop consuming, let running actors finish, requeue the rest.

        Args:
            timeout: Seconds to let running actors finish (default ``shutdown_timeout``).
                What still runs then is cancelled (async actors) or abandoned
                (threads) and its message is requeued.
        """
        if not self._started or self._stopping:
            return
        assert self._idle is not None and self._force is not None
        timeout = self.shutdown_timeout if timeout is None else timeout
        self._stopping = True
        for m in self.broker.middleware:
            await m.before_worker_shutdown(self.broker, self)
        for consumer in self._consumers:
            await consumer.cancel()
        for scope in list(self._waiting):
            scope.cancel()
        if self._running:
            log.info("waiting up to %.1f s for %d running messages", timeout, len(self._running))
            idle = asyncio.ensure_future(self._idle.wait())
            forced = asyncio.ensure_future(self._force.wait())
            await asyncio.wait({idle, forced}, timeout=timeout, return_when="FIRST_COMPLETED")
            idle.cancel()
            forced.cancel()
        if self._running:
            log.warning("%d messages did not finish in time; requeueing them", len(self._running))
            for task in list(self._running):
                task.cancel()
            await asyncio.wait(set(self._running), timeout=5)
        await self._close_consumers()
        self._started = False
        for m in self.broker.middleware:
            await m.after_worker_shutdown(self.broker, self)

    def force_stop(self) -> None:
        """Make a ``stop()`` in progress stop waiting for running messages."""
        if self._force is not None:
            self._force.set()

    async def _close_consumers(self) -> None:
        consumers, self._consumers = self._consumers, []
        for consumer in consumers:
            await consumer.close()

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- processing -----------------------------------------------------------------------

    async def _handle(self, plan: _QueuePlan, delivery: Delivery) -> None:
        task = asyncio.current_task()
        assert task is not None and self._idle is not None
        self.broker._delivery_started(plan.name)
        self._running.add(task)
        self._idle.clear()
        try:
            await self._process(plan, delivery)
        except Exception:
            # A bug, not the actor's failure: never leave the delivery unsettled (later acks
            # of its channel would wait behind it).
            log.exception("unexpected error while processing a message; requeueing it")
            await delivery.requeue()
        except BaseException:
            await delivery.requeue()  # cancelled (a forced stop): back to the queue
            raise
        finally:
            self._running.discard(task)
            if not self._running:
                self._idle.set()
            self.broker._delivery_settled(plan.name)

    async def _process(self, plan: _QueuePlan, delivery: Delivery) -> None:
        if self._stopping:
            await delivery.requeue()
            return
        actor_name: str | None = None
        try:
            if len(delivery.body) > self.broker.max_message_size:
                raise MessageTooLarge(
                    f"the body is {len(delivery.body)} bytes, more than max_message_size "
                    f"({self.broker.max_message_size} bytes)"
                )
            message = Message.decode(delivery.body)
            actor_name = message.actor_name
            actor = self.broker.get_actor(actor_name)
            args, kwargs = actor.arguments.decode(message.args, message.kwargs)
            if message.options:
                self._check_options(message)
            if message.queue_name != plan.name:
                # Retries and redeliveries go back to the queue the message came from.
                message = msgspec.structs.replace(message, queue_name=plan.name)
        except (MessageDecodeError, ActorNotFound, ValidationError, MessageTooLarge) as exc:
            await self._reject(plan.name, delivery, exc, actor_name)
            return
        self.broker._message_received(message)
        context = MessageContext(
            broker=self.broker, message=message, actor=actor, redelivered=delivery.redelivered
        )
        token = _current.set(message)
        try:
            await self._process_context(plan, delivery, context, args, kwargs)
        finally:
            _current.reset(token)

    def _check_options(self, message: Message) -> None:
        """Validate the per-message options middleware will read; others are carried as is."""
        options = message.options
        for name, value in options.items():
            if name in _COUNTER_OPTIONS:
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise ValidationError(f"option {name!r} must be an int >= 0, not {value!r}")
            elif name in self._message_options:
                normalized = self.broker.normalize_options(
                    {name: value},
                    owner=f"message for actor {message.actor_name!r}",
                    for_message=True,
                )
                options[name] = normalized[name]

    async def _process_context(
        self,
        plan: _QueuePlan,
        delivery: Delivery,
        context: MessageContext,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        message = context.message
        try:
            for m in self._before_process:
                await m.before_process_message(context)
        except SkipMessage as skip:
            try:
                await self._skip(plan, delivery, context, skip)
            except Exception as exc:
                await self._requeue_after_middleware_error(delivery, message, exc)
            return
        except Exception as exc:
            await self._requeue_after_middleware_error(delivery, message, exc)
            return

        try:
            context.result = await self._run(plan, context, args, kwargs)
        except _NotStarted:
            await delivery.requeue()
            return
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if sys.version_info >= (3, 11) and task is not None and not task.cancelling():
                context.exception = exc  # the actor's own CancelledError: a failure like others
            else:
                await delivery.requeue()
                raise
        except Exception as exc:
            context.exception = exc

        try:
            for m in self._after_process:
                await m.after_process_message(context)
        except Exception as exc:
            # E.g. a retry that could not be published: run the message again later.
            await self._requeue_after_middleware_error(delivery, message, exc)
            return
        await self._settle(plan, delivery, context)

    async def _skip(
        self, plan: _QueuePlan, delivery: Delivery, context: MessageContext, skip: SkipMessage
    ) -> None:
        message = context.message
        context.skip = skip
        for m in self._after_skip:
            await m.after_skip_message(context)
        if skip.dead_letter:
            log.warning(
                "skipped message %s of actor %s: %s",
                message.message_id,
                message.actor_name,
                skip.reason,
                extra=_fields(message),
            )
            headers = {
                "x-aqueue-reason": skip.reason,
                "x-aqueue-queue": plan.name,
                "x-aqueue-actor": message.actor_name,
                "x-aqueue-failed-at": _failures.now_iso(),
                **context.failure_headers,
            }
            await self._dead_letter(plan.name, delivery, headers, message.message_id)
        else:
            await delivery.ack()

    async def _requeue_after_middleware_error(
        self, delivery: Delivery, message: Message, exc: Exception
    ) -> None:
        log.error(
            "middleware failed on message %s (%s: %s); requeueing it",
            message.message_id,
            type(exc).__name__,
            exc,
            extra=_fields(message),
        )
        await anyio.sleep(1.0)  # no hot loop while, say, the broker cannot take a retry
        await delivery.requeue()

    async def _settle(self, plan: _QueuePlan, delivery: Delivery, context: MessageContext) -> None:
        """Ack a success or a scheduled retry; dead-letter a final failure."""
        message = context.message
        failure = context.exception
        if failure is None:
            await delivery.ack()
            return
        retried = context.retry_scheduled
        log.error(
            "actor %s failed on message %s: %s: %s%s",
            message.actor_name,
            message.message_id,
            type(failure).__name__,
            failure,
            "; retry scheduled" if retried else "; dead-lettered",
            extra=_fields(message),
        )
        log.debug("traceback of message %s", message.message_id, exc_info=failure)
        if retried:
            await delivery.ack()
            return
        headers = _failures.failure_headers(
            _failures.FAILED, failure, queue_name=plan.name, actor_name=message.actor_name
        )
        headers.update(context.failure_headers)
        await self._dead_letter(plan.name, delivery, headers, message.message_id)
        self.broker._record_failure(plan.name, failure)

    async def _run(
        self,
        plan: _QueuePlan,
        context: MessageContext,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        actor = context.actor
        time_limit = None if self._time_limit is None else self._time_limit.limit_for(context)
        limiter = plan.limiters.get(actor.actor_name)
        if limiter is not None:
            await self._acquire(limiter)
        try:
            if actor.is_async:
                if time_limit is None:
                    return await actor.fn(*args, **kwargs)
                try:
                    return await self._deadlines.run(actor.fn(*args, **kwargs), time_limit)
                except DeadlineExceeded:
                    raise _time_limit_exceeded(actor.actor_name, time_limit) from None
            await self._acquire(self._thread_slots)
            try:
                call = functools.partial(actor.fn, *args, **kwargs)
                try:
                    return await run_in_thread(
                        call, limiter=self._thread_pool, time_limit=time_limit
                    )
                except TimeLimitExceeded:
                    raise _time_limit_exceeded(actor.actor_name, time_limit) from None
            finally:
                self._thread_slots.release()
        finally:
            if limiter is not None:
                limiter.release()

    async def _acquire(self, limiter: anyio.CapacityLimiter) -> None:
        """Take a slot; raise _NotStarted if the worker starts stopping meanwhile."""
        try:
            limiter.acquire_nowait()
            return
        except anyio.WouldBlock:
            pass
        with anyio.CancelScope() as scope:
            self._waiting.add(scope)
            try:
                await limiter.acquire()
            finally:
                self._waiting.discard(scope)
        if scope.cancelled_caught:
            raise _NotStarted

    async def _reject(
        self, queue_name: str, delivery: Delivery, exc: Exception, actor_name: str | None
    ) -> None:
        reason = (
            _failures.TOO_LARGE
            if isinstance(exc, MessageTooLarge)
            else _failures.UNDECODABLE
            if isinstance(exc, MessageDecodeError)
            else _failures.UNKNOWN_ACTOR
            if isinstance(exc, ActorNotFound)
            else _failures.INVALID_ARGUMENTS
        )
        log.error(
            "rejected a message from queue %s (%s): %s",
            queue_name,
            reason,
            exc,
            extra={"queue": queue_name, "actor": actor_name},
        )
        headers = _failures.failure_headers(
            reason, exc, queue_name=queue_name, actor_name=actor_name
        )
        await self._dead_letter(queue_name, delivery, headers, None)

    async def _dead_letter(
        self, queue_name: str, delivery: Delivery, headers: dict[str, str], message_id: str | None
    ) -> None:
        try:
            await self.broker.dead_letter(queue_name, delivery, headers)
        except Exception as exc:
            log.warning(
                "could not dead-letter message %s of queue %s (%s); requeueing it",
                message_id or "(undecodable)",
                queue_name,
                exc,
            )
            await anyio.sleep(1.0)  # no hot loop if the dead-letter queue stays unreachable
            await delivery.requeue()


#: Counters middleware keeps in a message's options.
_COUNTER_OPTIONS = frozenset({"retries", "redeliveries", "first_failed_at"})


def _time_limit_exceeded(actor_name: str, limit: float | None) -> TimeLimitExceeded:
    return TimeLimitExceeded(f"actor {actor_name} exceeded its time limit of {limit} s")


def _fields(message: Message) -> dict[str, str]:
    return {
        "message_id": message.message_id,
        "actor": message.actor_name,
        "queue": message.queue_name,
    }
