"""What a worker does with one delivery: decode it, run middleware and the actor, settle it.

Every delivery ends here in one of four ways: acknowledged (a success, a skip, a
scheduled retry), dead-lettered (a final failure, or a message that cannot run: too
large, undecodable, of an unknown actor, with invalid arguments), given back (the
worker is stopping before it finished: published again uncounted, then acked) or
requeued (middleware failed). What is given back or requeued counts for ``join``.

A delivery lost with its channel (the connection dropped) is not started late, and the
run of one that had started goes on: RabbitMQ's redelivered copy of it is settled like that
run, without running again (``_recent``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import time
from typing import Any

import anyio

from ._deadlines import DeadlineExceeded, Deadlines, time_limit_exceeded
from ._decoding import REJECTIONS, MessageTooLarge, bind_message, decode_message, rejection_reason
from ._failures import FAILED, failure_headers, now_iso
from ._plans import QueuePlan
from ._recent import Outcome, RecentMessages
from ._threads import NotStarted, ThreadPool
from .broker import CORE_ACTOR_OPTIONS, Broker, Delivery
from .context import MessageContext, _current
from .errors import TimeLimitExceeded
from .message import Message
from .middleware import Middleware, SkipMessage, TimeLimit
from .middleware.base import overrides

__all__ = ["MessageProcessor", "MessageTooLarge"]

# The worker's logger: what happens to messages is logged as ``aqueue.worker``.
log = logging.getLogger("aqueue.worker")


class _NotStarted(Exception):
    """The worker began to stop, or the delivery was lost, while it waited for a free slot."""


class MessageProcessor:
    """Processes the deliveries of a worker's consumers, one ``process()`` call each.

    Args:
        broker: The worker's broker.
        threads: Size of the thread pool for blocking actors.
    """

    def __init__(self, broker: Broker, *, threads: int) -> None:
        self.broker = broker
        #: Set while the worker stops: new deliveries are given back.
        self.stopping = False
        self._waiting: set[anyio.CancelScope] = set()
        self._threads = ThreadPool(threads)
        self._before_process: list[Middleware] = []
        self._after_process: list[Middleware] = []
        self._after_skip: list[Middleware] = []
        self._after_reject: list[Middleware] = []
        self._time_limit: TimeLimit | None = None
        self._message_options: frozenset[str] = frozenset()
        self._deadlines = Deadlines()
        self._recent = RecentMessages()
        # Deliveries that ended without finishing: given back, requeued, lost, handed on.
        self._returned: set[Delivery] = set()

    def prepare(self) -> None:
        """Take the broker's middleware and options as they are now: when the worker starts."""
        self.stopping = False
        stack = self.broker.middleware
        self._before_process = [m for m in stack if overrides(m, "before_process_message")]
        self._after_process = [m for m in stack if overrides(m, "after_process_message")]
        self._after_skip = [m for m in stack if overrides(m, "after_skip_message")]
        self._after_reject = [m for m in stack if overrides(m, "after_reject_message")]
        self._time_limit = next((m for m in stack if isinstance(m, TimeLimit)), None)
        self._message_options = self.broker.actor_options - CORE_ACTOR_OPTIONS

    def stop_waiting(self) -> None:
        """Give back at once the deliveries that wait for a free slot (the worker stops)."""
        for scope in list(self._waiting):
            scope.cancel()
        self._threads.cancel_waiting()

    async def process(self, plan: QueuePlan, delivery: Delivery) -> None:
        """Process one delivery of ``plan``'s queue, and settle it."""
        try:
            if self.stopping:
                await self._put_back(plan.name, delivery)
            else:
                await self._process(plan, delivery)
        except asyncio.CancelledError:
            # A stop that ran out of time (a no-op if the delivery was settled already).
            await self._put_back(plan.name, delivery)
            raise
        finally:
            self._returned.discard(delivery)

    async def _put_back(self, queue_name: str, delivery: Delivery) -> None:
        """Requeue a delivery; give it back uncounted by the redelivery limit if stopping."""
        self._returned.add(delivery)
        self.broker._put_back(queue_name, delivery.message_id)
        if not self.stopping:
            await delivery.requeue()
            return
        giving = asyncio.ensure_future(self.broker.give_back(queue_name, delivery))
        try:
            await asyncio.shield(giving)
        except asyncio.CancelledError:
            await giving  # a forced stop: a publish left half done could duplicate it
            raise

    async def _process(self, plan: QueuePlan, delivery: Delivery) -> None:
        message: Message | None = None
        try:
            message = decode_message(self.broker, delivery.body)
            message, actor, args, kwargs = bind_message(
                self.broker, plan.name, message, self._message_options
            )
        except REJECTIONS as exc:
            await self._reject(plan.name, delivery, exc, message)
            return
        self.broker._message_received(message)
        recent = self._recent
        options = message.options
        key = recent.key(message.message_id, options.get("retries", 0))
        redelivered = delivery.redelivered
        if redelivered or options.get("redeliveries"):
            # RabbitMQ's copy of a message this process ran when its connection dropped, or
            # that copy counted and republished by the redelivery limit of another process.
            await recent.wait(key)
            ended = recent.ended(key)
            if ended is Outcome.FINISHED:
                log.info(
                    "message %s of actor %s came back after a lost connection, but this worker "
                    "finished it already: acknowledged without running it again",
                    message.message_id,
                    message.actor_name,
                    extra=_fields(message),
                )
                await delivery.ack()
                return
            if ended is Outcome.RETURNED:
                redelivered = False  # it came back for a reason known here, not a crash
        tracked = not recent.is_running(key)  # else a duplicate publish of a running message
        context = MessageContext(
            broker=self.broker, message=message, actor=actor, redelivered=redelivered
        )
        token = _current.set(message)
        outcome = Outcome.RETURNED
        if tracked:
            recent.start(key)
        try:
            await self._process_context(plan, delivery, context, args, kwargs)
            if delivery not in self._returned:
                outcome = Outcome.FINISHED
        finally:
            _current.reset(token)
            if tracked:
                recent.end(key, outcome)

    async def _process_context(
        self,
        plan: QueuePlan,
        delivery: Delivery,
        context: MessageContext,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        message = context.message
        started = time.perf_counter() if log.isEnabledFor(logging.DEBUG) else 0.0
        try:
            for m in self._before_process:
                await m.before_process_message(context)
        except SkipMessage as skip:
            try:
                await self._skip(plan, delivery, context, skip)
            except Exception as exc:
                await self._requeue_after_middleware_error(plan.name, delivery, message, exc)
            return
        except Exception as exc:
            await self._requeue_after_middleware_error(plan.name, delivery, message, exc)
            return

        try:
            context.result = await self._run(plan, delivery, context, args, kwargs)
        except _NotStarted:
            if delivery.lost:
                # Its channel closed while it waited: the broker delivers it again.
                self._returned.add(delivery)
                self.broker._put_back(plan.name, message.message_id)
            else:
                await self._put_back(plan.name, delivery)
            return
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if sys.version_info >= (3, 11) and task is not None and not task.cancelling():
                context.exception = exc  # the actor's own CancelledError: a failure like others
            else:
                raise  # a stop that ran out of time: process() gives the delivery back
        except Exception as exc:
            context.exception = exc

        try:
            for m in self._after_process:
                await m.after_process_message(context)
        except Exception as exc:
            # E.g. a retry that could not be published: run the message again later.
            await self._requeue_after_middleware_error(plan.name, delivery, message, exc)
            return
        await self._settle(plan, delivery, context)
        if started:
            outcome = (
                "succeeded"
                if context.exception is None
                else "failed, retry scheduled"
                if context.retry_scheduled
                else "failed, dead-lettered"
            )
            log.debug(
                "message %s of actor %s %s in %.1f ms",
                message.message_id,
                message.actor_name,
                outcome,
                (time.perf_counter() - started) * 1000,
                extra=_fields(message),
            )

    async def _skip(
        self, plan: QueuePlan, delivery: Delivery, context: MessageContext, skip: SkipMessage
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
                "x-aqueue-failed-at": now_iso(),
                **context.failure_headers,
            }
            await self._dead_letter(plan.name, delivery, headers, message.message_id)
        else:
            # Not finished: e.g. the redelivery limit handed it on to a copy it published.
            self._returned.add(delivery)
            await delivery.ack()

    async def _requeue_after_middleware_error(
        self, queue_name: str, delivery: Delivery, message: Message, exc: Exception
    ) -> None:
        log.error(
            "middleware failed on message %s (%s: %s); requeueing it",
            message.message_id,
            type(exc).__name__,
            exc,
            extra=_fields(message),
        )
        await anyio.sleep(1.0)  # no hot loop while, say, the broker cannot take a retry
        await self._put_back(queue_name, delivery)

    async def _settle(self, plan: QueuePlan, delivery: Delivery, context: MessageContext) -> None:
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
        headers = failure_headers(
            FAILED, failure, queue_name=plan.name, actor_name=message.actor_name
        )
        headers.update(context.failure_headers)
        await self._dead_letter(plan.name, delivery, headers, message.message_id)
        self.broker._record_failure(plan.name, failure)

    async def _run(
        self,
        plan: QueuePlan,
        delivery: Delivery,
        context: MessageContext,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        actor = context.actor
        time_limit = None if self._time_limit is None else self._time_limit.limit_for(context)
        limiter = plan.limiters.get(actor.actor_name)
        if limiter is not None:
            await self._acquire(limiter, delivery)
        elif delivery.lost:
            raise _NotStarted
        try:
            if actor.is_async:
                if time_limit is None:
                    return await actor.fn(*args, **kwargs)
                try:
                    return await self._deadlines.run(actor.fn(*args, **kwargs), time_limit)
                except DeadlineExceeded:
                    raise time_limit_exceeded(actor.actor_name, time_limit) from None
            call = functools.partial(actor.fn, *args, **kwargs)
            try:
                return await self._threads.run(
                    call, time_limit=time_limit, skip=lambda: delivery.lost
                )
            except TimeLimitExceeded:
                raise time_limit_exceeded(actor.actor_name, time_limit) from None
            except NotStarted:
                raise _NotStarted from None
        finally:
            if limiter is not None:
                limiter.release()

    async def _acquire(self, limiter: anyio.CapacityLimiter, delivery: Delivery) -> None:
        """Take a slot; raise _NotStarted if the worker starts stopping meanwhile, or if
        the delivery was lost (a work that did not start is not started late)."""
        try:
            limiter.acquire_nowait()
        except anyio.WouldBlock:
            with anyio.CancelScope() as scope:
                self._waiting.add(scope)
                try:
                    await limiter.acquire()
                finally:
                    self._waiting.discard(scope)
            if scope.cancelled_caught:
                raise _NotStarted from None
        if delivery.lost:
            limiter.release()
            raise _NotStarted

    async def _reject(
        self, queue_name: str, delivery: Delivery, exc: Exception, message: Message | None
    ) -> None:
        reason = rejection_reason(exc)
        if message is not None:  # decoded, but it cannot run here
            try:
                for m in self._after_reject:
                    await m.after_reject_message(self.broker, message, exc, reason)
            except Exception as error:
                await self._requeue_after_middleware_error(queue_name, delivery, message, error)
                return
        actor_name = None if message is None else message.actor_name
        log.error(
            "rejected a message from queue %s (%s): %s",
            queue_name,
            reason,
            exc,
            extra={"queue": queue_name, "actor": actor_name},
        )
        headers = failure_headers(reason, exc, queue_name=queue_name, actor_name=actor_name)
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
            await self._put_back(queue_name, delivery)


def _fields(message: Message) -> dict[str, str]:
    return {
        "message_id": message.message_id,
        "actor": message.actor_name,
        "queue": message.queue_name,
    }
