"""The worker: consumes queues and runs actors, async ones on the loop, blocking ones in threads.

This module is the worker's lifecycle: start, stop, and the bookkeeping of running
messages. What queues and prefetch counts it uses is worked out in ``_plans``; what
happens to each delivery (middleware, the actor, ack, retry or dead letter) is in
``_processing``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Coroutine, Iterable
from types import TracebackType
from typing import Any

from ._plans import QueuePlan, plan_queues
from ._processing import MessageProcessor
from ._processing import MessageTooLarge as MessageTooLarge
from ._scheduler import Scheduler
from .broker import Broker, Consumer, Delivery

__all__ = ["Worker"]

log = logging.getLogger(__name__)

#: A stop gives the broker this long to answer its cancels, and then its closes, even
#: when the shutdown timeout has run out (acks of finished messages must reach it) ...
_BROKER_GRACE = 1.0
#: ... and no longer than this (the broker is unreachable then: waiting cannot help).
_BROKER_WAIT = 5.0


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
        scheduler: Run the broker's schedules in this worker too (see
            :func:`aqueue.schedule`): of all the processes that run them, one at a time
            fires the ticks.
        prefetch_exact: Fetch only what runs: each queue's prefetch is exactly the sum of
            its actors' concurrency, without the headroom blocking actors get otherwise
            (for autoscaled fleets, so the backlog stays visible in the queue).
    """

    def __init__(
        self,
        broker: Broker,
        *,
        queues: Iterable[str] | None = None,
        concurrency: int = 100,
        threads: int = 8,
        shutdown_timeout: float = 30.0,
        prefetch_exact: bool = False,
        scheduler: bool = True,
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
        self.prefetch_exact = prefetch_exact
        self.scheduler: Scheduler | None = None
        self._runs_schedules = scheduler
        self._plans: list[QueuePlan] = []
        self._consumers: list[Consumer] = []
        self._running: set[asyncio.Task[Any]] = set()
        self._idle: asyncio.Event | None = None
        self._force: asyncio.Event | None = None
        self._started = False
        self._processor = MessageProcessor(broker, threads=threads)
        # Whether the broker left cancels or closes of the last stop() unanswered.
        self._broker_unanswered = False

    @property
    def consuming_queues(self) -> dict[str, bool]:
        """Each queue the worker consumes and whether it is subscribed now (False while its
        consumer subscribes again after a lost channel or a cancel by the broker); empty
        when the worker is not running."""
        if len(self._consumers) != len(self._plans):
            return {}
        return {p.name: c.consuming for p, c in zip(self._plans, self._consumers, strict=True)}

    # -- lifecycle ------------------------------------------------------------------------

    def plan(self) -> list[QueuePlan]:
        """Work out queues, prefetch counts and limits; WorkerError if there is nothing to run."""
        return plan_queues(
            self.broker,
            self.queues,
            concurrency=self.concurrency,
            threads=self.threads,
            prefetch_exact=self.prefetch_exact,
        )

    async def start(self) -> None:
        """Connect, declare the queues and start consuming."""
        if self._started:
            return
        self._plans = self.plan()
        self._idle = asyncio.Event()
        self._idle.set()
        self._force = asyncio.Event()
        self._processor.prepare()
        stack = self.broker.middleware
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
        if self._runs_schedules and self.broker.schedules:
            self.scheduler = Scheduler(self.broker)
            try:
                await self.scheduler.start()
            except BaseException:
                await self._close_consumers()
                raise
        self._started = True
        for m in stack:
            await m.after_worker_boot(self.broker, self)

    async def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully: stop consuming, let running actors finish, requeue the rest.

        The broker's part (cancelling every queue's consumer, closing their channels) runs
        for all queues at once, within what is left of ``timeout`` (at least a second, at
        most five, for each), so a broker that does not answer (a network outage) makes the
        stop last ``timeout`` plus about two seconds at most, with one warning. What was not
        acknowledged then is redelivered by the broker.

        Args:
            timeout: Seconds to let running actors finish (default ``shutdown_timeout``).
                What still runs then is cancelled (async actors) or abandoned
                (threads) and its message is given back to its queue.
        """
        if not self._started or self._processor.stopping:
            return
        assert self._idle is not None and self._force is not None
        timeout = self.shutdown_timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._processor.stopping = True
        if self.scheduler is not None:
            # First, so that another process takes the schedules over at once.
            scheduler, self.scheduler = self.scheduler, None
            if not await _all_within([scheduler.stop()], _broker_wait(deadline)):
                log.warning("the scheduler did not stop in time (the broker did not answer)")
        for m in self.broker.middleware:
            await m.before_worker_shutdown(self.broker, self)
        answered = await _all_within(
            [consumer.cancel() for consumer in self._consumers], _broker_wait(deadline)
        )
        self._processor.stop_waiting()
        if self._running:
            left = max(0.0, deadline - loop.time())
            log.info("waiting up to %.1f s for %d running messages", left, len(self._running))
            idle = asyncio.ensure_future(self._idle.wait())
            forced = asyncio.ensure_future(self._force.wait())
            await asyncio.wait({idle, forced}, timeout=left, return_when="FIRST_COMPLETED")
            idle.cancel()
            forced.cancel()
        if self._running:
            log.warning("%d messages did not finish in time; requeueing them", len(self._running))
            for task in list(self._running):
                task.cancel()
            # Giving them back needs the broker: little time when it did not answer.
            await asyncio.wait(set(self._running), timeout=5 if answered else _BROKER_GRACE)
        answered = await self._close_consumers(deadline) and answered
        self._broker_unanswered = not answered
        if not answered:
            log.warning(
                "the broker did not answer while the worker stopped (unreachable?); "
                "stopping anyway: it redelivers the messages that were not acknowledged"
            )
        self._started = False
        for m in self.broker.middleware:
            await m.after_worker_shutdown(self.broker, self)

    def force_stop(self) -> None:
        """Make a ``stop()`` in progress stop waiting for running messages."""
        if self._force is not None:
            self._force.set()

    async def _close_consumers(self, deadline: float | None = None) -> bool:
        """Close every consumer at once; False if some did not finish in time."""
        consumers, self._consumers = self._consumers, []
        if deadline is None:
            deadline = asyncio.get_running_loop().time()
        return await _all_within([c.close() for c in consumers], _broker_wait(deadline))

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

    # -- running messages -----------------------------------------------------------------

    async def _handle(self, plan: QueuePlan, delivery: Delivery) -> None:
        """A consumer's handler: process a delivery, counted among the running ones."""
        task = asyncio.current_task()
        assert task is not None and self._idle is not None
        self.broker._delivery_started(plan.name)
        self._running.add(task)
        self._idle.clear()
        try:
            await self._processor.process(plan, delivery)
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


def _broker_wait(deadline: float) -> float:
    """Seconds to wait for the broker: what is left until ``deadline``, within bounds."""
    left = deadline - asyncio.get_running_loop().time()
    return min(max(left, _BROKER_GRACE), _BROKER_WAIT)


async def _all_within(calls: list[Coroutine[Any, Any, None]], seconds: float) -> bool:
    """Run ``calls`` at once for up to ``seconds``; False if some did not finish.

    Those are cancelled and not waited for (a write to a connection that does not
    drain may not end soon). An error of one is logged and ends only that one.
    """
    if not calls:
        return True
    tasks = [asyncio.ensure_future(call) for call in calls]
    done, pending = await asyncio.wait(tasks, timeout=seconds)
    for task in pending:
        task.add_done_callback(_retrieve)
        task.cancel()
    for task in done:
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            log.error("stopping a consumer failed", exc_info=exc)
    return not pending


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
