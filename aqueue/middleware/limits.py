"""Concurrency and rate limits shared by every worker, with tokens the broker holds."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

import msgspec

from .._durations import to_seconds
from .._limit_support import TokenHold
from ..context import MessageContext
from ..limits import Limit, Tokens
from .base import Middleware, SkipMessage

if TYPE_CHECKING:
    from ..broker import Broker
    from ..worker import Worker

__all__ = ["POSTPONED", "LimitMetrics", "Limits"]

log = logging.getLogger("aqueue.limits")

#: The message option that counts how often a message was postponed by its limits.
POSTPONED = "limit_postponed"
#: Messages of a queue that may wait for one limit at once when the worker's plan does
#: not say (by default, half the queue's prefetch).
DEFAULT_MAX_WAITING = 10


class LimitMetrics:
    """Where :class:`Limits` reports, by limit name (the Prometheus middleware fills it)."""

    def __init__(
        self,
        *,
        waiting: Callable[[str, int], None],
        in_use: Callable[[str, int], None],
        postponed: Callable[[str], None],
    ) -> None:
        #: ``(limit, +1 | -1)``: a message starts or stops waiting for a token.
        self.waiting = waiting
        #: ``(limit, +1 | -1)``: this process takes or gives back a concurrency token.
        self.in_use = in_use
        #: ``(limit)``: a message was postponed for want of a token.
        self.postponed = postponed


class Limits(Middleware):
    """Apply the actors' ``limits``: at most ``concurrency`` runs at once and ``rate``
    starts per period, across every worker using the broker.

    Before a message of a limited actor runs (on the event loop: no thread is taken
    yet), it takes a token of each kind each of its limits needs, and holds them until
    its run ends. A message that finds none waits up to ``wait`` seconds, in turn, if
    fewer than ``max_waiting`` messages of its queue in this process already wait for that
    limit, else it does not wait; then, still without a token, it is postponed: published
    again with a delay (not a retry; its postponements are counted in
    ``options["limit_postponed"]``) and its delivery acked once the copy is confirmed.
    The delay is the wait it can expect, from the messages waiting here and the limit's
    numbers (its recent run time over ``concurrency``; for a rate, the period and a run
    time over its count), from ``min_backoff`` to ``max_backoff``, with a jitter. So
    waiting messages hold no thread, leave half their queue's prefetch window to other
    actors, and never hold a delivery near ``consumer_timeout``.

    Actor option (on the actor only, not per message):
        limits: A list of :class:`~aqueue.Limit`.

    Args:
        wait: Seconds a message may wait for a token before it is postponed.
        max_waiting: Messages of a queue that may wait for one limit at once in this
            process; by default half the queue's prefetch.
        min_backoff: Shortest delay of a postponed message, seconds.
        max_backoff: Longest delay of a postponed message, seconds.
    """

    actor_options: ClassVar[frozenset[str]] = frozenset({"limits"})
    actor_only_options: ClassVar[frozenset[str]] = frozenset({"limits"})

    def __init__(
        self,
        *,
        wait: float = 1.0,
        max_waiting: int | None = None,
        min_backoff: float = 0.1,
        max_backoff: float = 5.0,
    ) -> None:
        self.wait = to_seconds(wait, name="wait")
        if max_waiting is not None and (
            not isinstance(max_waiting, int) or isinstance(max_waiting, bool) or max_waiting < 0
        ):
            raise ValueError(f"max_waiting must be None or an int >= 0, not {max_waiting!r}")
        self.max_waiting = max_waiting
        self.min_backoff = to_seconds(min_backoff, name="min_backoff", allow_zero=False)
        self.max_backoff = to_seconds(max_backoff, name="max_backoff", allow_zero=False)
        if self.max_backoff < self.min_backoff:
            raise ValueError("max_backoff must be at least min_backoff")
        #: Set by the Prometheus middleware (or yours) to observe the limits.
        self.metrics: LimitMetrics | None = None
        self._holds: dict[MessageContext, list[tuple[Tokens, TokenHold]]] = {}
        self._waiting: dict[tuple[str, str], int] = {}  # by queue and Tokens.key
        self._max_waiting: dict[str, int] = {}  # by queue, from the worker's prefetch
        self._started: dict[MessageContext, float] = {}
        self._run_time: dict[str, float] = {}  # by Tokens.key: recent runs, averaged
        self._releasing: set[asyncio.Future[None]] = set()

    def normalize_option(self, name: str, value: Any) -> Any:
        if isinstance(value, Limit):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, Limit) for v in value):
            raise ValueError(f"limits must be a list of aqueue.Limit, not {value!r}")
        names = [limit.name for limit in value]
        if len(set(names)) != len(names):
            raise ValueError(f"limits: a limit is named twice in {names}")
        return tuple(value)

    async def before_worker_boot(self, broker: Broker, worker: Worker) -> None:
        queues = None if worker.queues is None else set(worker.queues)
        tokens = {
            t.key: t
            for actor in broker.actors.values()
            if queues is None or actor.queue_name in queues
            for limit in actor.options.get("limits", ())
            for t in limit.tokens()
        }
        await broker.prepare_tokens(tokens.values())
        if self.max_waiting is None:
            self._max_waiting.update(
                (plan.name, max(1, plan.prefetch // 2)) for plan in worker.plan()
            )

    async def before_process_message(self, context: MessageContext) -> None:
        limits: tuple[Limit, ...] = context.actor.options.get("limits", ())
        if not limits:
            return
        holds: list[tuple[Tokens, TokenHold]] = []
        missing = None
        try:
            for tokens in (t for limit in limits for t in limit.tokens()):
                hold = await self._take(context, tokens)
                if hold is None:
                    missing = tokens
                    break
                holds.append((tokens, hold))
        except BaseException:
            await self._release(holds, used=False)
            raise
        if missing is not None:
            await self._release(holds, used=False)
            await self._postpone(context, missing)
        self._holds[context] = holds
        self._started[context] = time.monotonic()
        task = asyncio.current_task()
        if task is not None:
            # A run that ends without the after hooks (the worker stopped before it
            # started, a later middleware failed) gives its tokens back too.
            task.add_done_callback(lambda _: self._release_left(context))

    async def after_process_message(self, context: MessageContext) -> None:
        if self._holds:  # else no limited message runs here: nothing to look up
            holds = self._holds.pop(context, [])
            started = self._started.pop(context, None)
            if started is not None:
                took = time.monotonic() - started
                for tokens, _ in holds:
                    # A moving average: what a waiting message can expect, to postpone it by.
                    average = self._run_time.get(tokens.key, took)
                    self._run_time[tokens.key] = 0.8 * average + 0.2 * took
            await self._release(holds)

    async def after_skip_message(self, context: MessageContext) -> None:
        if self._holds:
            self._started.pop(context, None)
            await self._release(self._holds.pop(context, []), used=False)

    async def _take(self, context: MessageContext, tokens: Tokens) -> TokenHold | None:
        key = (context.actor.queue_name, tokens.key)
        waiting = self._waiting.get(key, 0)
        most = self.max_waiting
        if most is None:
            most = self._max_waiting.get(key[0], DEFAULT_MAX_WAITING)
        wait = self.wait if waiting < most else 0.0
        self._waiting[key] = waiting + 1
        metrics = self.metrics
        if metrics is not None:
            metrics.waiting(tokens.limit, 1)
        try:
            hold = await context.broker.take_token(tokens, wait=wait)
        finally:
            self._waiting[key] -= 1
            if metrics is not None:
                metrics.waiting(tokens.limit, -1)
        if hold is not None and metrics is not None and tokens.kind == "concurrency":
            metrics.in_use(tokens.limit, 1)
        return hold

    async def _release(self, holds: list[tuple[Tokens, TokenHold]], *, used: bool = True) -> None:
        """Give back a run's tokens; a rate token is free again a period after a run that
        was ``used`` (it may have started) ended, else at once."""
        for tokens, hold in holds:
            await hold.release(used=used)
            if self.metrics is not None and tokens.kind == "concurrency":
                self.metrics.in_use(tokens.limit, -1)

    def _release_left(self, context: MessageContext) -> None:
        self._started.pop(context, None)
        holds = self._holds.pop(context, None)
        if holds:
            log.debug("message %s ended unrun: its limit tokens go back", context.message)
            releasing = asyncio.ensure_future(self._release(holds))
            self._releasing.add(releasing)  # each release is bounded (TokenHold.release)
            releasing.add_done_callback(self._releasing.discard)

    def _expected_wait(self, context: MessageContext, tokens: Tokens) -> float:
        """How long a message that found no token can expect to wait for one: a token is
        free every run time over the count (a rate token: a period and a run time), and
        the messages waiting here take their turns first."""
        waiting = sum(n for (_, key), n in self._waiting.items() if key == tokens.key)
        run_time = self._run_time.get(tokens.key, 0.0)
        if tokens.kind == "rate":
            run_time += tokens.period
        return (waiting + 1) * run_time / tokens.count

    async def _postpone(self, context: MessageContext, tokens: Tokens) -> NoReturn:
        message = context.message
        count = int(message.options.get(POSTPONED, 0)) + 1
        delay = self._expected_wait(context, tokens) * random.uniform(0.75, 1.25)
        delay = min(self.max_backoff, max(self.min_backoff, delay))
        postponed = msgspec.structs.replace(message, options={**message.options, POSTPONED: count})
        await context.broker.enqueue(postponed, delay=delay)
        context.broker._retry_scheduled(postponed, delay)  # join() waits for it
        if self.metrics is not None:
            self.metrics.postponed(tokens.limit)
        level = logging.WARNING if count % 50 == 0 else logging.DEBUG
        log.log(
            level,
            "message %s of actor %s found no %s token of limit %s (postponed %d times): "
            "runs again in %.1f s",
            message.message_id,
            message.actor_name,
            tokens.kind,
            tokens.limit,
            count,
            delay,
            extra={"message_id": message.message_id, "actor": message.actor_name},
        )
        raise SkipMessage(f"waiting for limit {tokens.limit}", dead_letter=False)
