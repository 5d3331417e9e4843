"""Concurrency and rate limits shared by every worker, with tokens the broker holds."""

from __future__ import annotations

import asyncio
import logging
import random
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
    yet), it takes a token of each kind each of its limits needs. A message that finds
    none waits up to ``wait`` seconds, if fewer than ``max_waiting`` messages of this
    process already wait for that limit, else it does not wait; then, still without a
    token, it is postponed: published again with a delay of ``uniform(0.5, 1) *
    min(max_backoff, min_backoff * 2**n)`` seconds (``n``: its earlier postponements,
    counted in ``options["limit_postponed"]``; not a retry) and its delivery acked once
    the copy is confirmed. So waiting messages neither hold a thread nor fill the
    prefetch window of their queue, and never hold a delivery near ``consumer_timeout``.

    Actor option (on the actor only, not per message):
        limits: A list of :class:`~aqueue.Limit`.

    Args:
        wait: Seconds a message may wait for a token before it is postponed.
        max_waiting: Messages of this process that may wait for one limit at once.
        min_backoff: Shortest delay of a postponed message, seconds.
        max_backoff: Longest delay of a postponed message, seconds.
    """

    actor_options: ClassVar[frozenset[str]] = frozenset({"limits"})
    actor_only_options: ClassVar[frozenset[str]] = frozenset({"limits"})

    def __init__(
        self,
        *,
        wait: float = 0.5,
        max_waiting: int = 1,
        min_backoff: float = 1.0,
        max_backoff: float = 60.0,
    ) -> None:
        self.wait = to_seconds(wait, name="wait")
        if not isinstance(max_waiting, int) or isinstance(max_waiting, bool) or max_waiting < 0:
            raise ValueError(f"max_waiting must be an int >= 0, not {max_waiting!r}")
        self.max_waiting = max_waiting
        self.min_backoff = to_seconds(min_backoff, name="min_backoff", allow_zero=False)
        self.max_backoff = to_seconds(max_backoff, name="max_backoff", allow_zero=False)
        if self.max_backoff < self.min_backoff:
            raise ValueError("max_backoff must be at least min_backoff")
        #: Set by the Prometheus middleware (or yours) to observe the limits.
        self.metrics: LimitMetrics | None = None
        self._holds: dict[MessageContext, list[tuple[Tokens, TokenHold]]] = {}
        self._waiting: dict[str, int] = {}  # by Tokens.key
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

    async def before_process_message(self, context: MessageContext) -> None:
        limits: tuple[Limit, ...] = context.actor.options.get("limits", ())
        if not limits:
            return
        holds: list[tuple[Tokens, TokenHold]] = []
        missing = None
        try:
            for tokens in (t for limit in limits for t in limit.tokens()):
                hold = await self._take(context.broker, tokens)
                if hold is None:
                    missing = tokens
                    break
                holds.append((tokens, hold))
        except BaseException:
            await self._release(holds)
            raise
        if missing is not None:
            await self._release(holds)
            await self._postpone(context, missing)
        self._holds[context] = holds
        task = asyncio.current_task()
        if task is not None:
            # A run that ends without the after hooks (the worker stopped before it
            # started, a later middleware failed) gives its tokens back too.
            task.add_done_callback(lambda _: self._release_left(context))

    async def after_process_message(self, context: MessageContext) -> None:
        if self._holds:  # else no limited message runs here: nothing to look up
            await self._release(self._holds.pop(context, []))

    async def after_skip_message(self, context: MessageContext) -> None:
        if self._holds:
            await self._release(self._holds.pop(context, []))

    async def _take(self, broker: Broker, tokens: Tokens) -> TokenHold | None:
        key = tokens.key
        waiting = self._waiting.get(key, 0)
        wait = self.wait if waiting < self.max_waiting else 0.0
        self._waiting[key] = waiting + 1
        metrics = self.metrics
        if metrics is not None:
            metrics.waiting(tokens.limit, 1)
        try:
            hold = await broker.take_token(tokens, wait=wait)
        finally:
            self._waiting[key] -= 1
            if metrics is not None:
                metrics.waiting(tokens.limit, -1)
        if hold is not None and metrics is not None and tokens.kind == "concurrency":
            metrics.in_use(tokens.limit, 1)
        return hold

    async def _release(self, holds: list[tuple[Tokens, TokenHold]]) -> None:
        for tokens, hold in holds:
            await hold.release()
            if self.metrics is not None and tokens.kind == "concurrency":
                self.metrics.in_use(tokens.limit, -1)

    def _release_left(self, context: MessageContext) -> None:
        holds = self._holds.pop(context, None)
        if holds:
            log.debug("message %s ended unrun: its limit tokens go back", context.message)
            releasing = asyncio.ensure_future(self._release(holds))
            self._releasing.add(releasing)  # each release is bounded (TokenHold.release)
            releasing.add_done_callback(self._releasing.discard)

    async def _postpone(self, context: MessageContext, tokens: Tokens) -> NoReturn:
        message = context.message
        count = int(message.options.get(POSTPONED, 0)) + 1
        delay = min(self.max_backoff, self.min_backoff * 2.0 ** (count - 1))
        delay *= random.uniform(0.5, 1.0)
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
