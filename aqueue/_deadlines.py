"""Time limits of async actors: one timer for all the deadlines of a worker."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import sys
from collections.abc import Awaitable
from typing import Any

from .errors import TimeLimitExceeded


class DeadlineExceeded(Exception):
    """The awaited call ran past its deadline and was cancelled."""


class Deadlines:
    """Cancels tasks that pass their deadline.

    A timer per message (``call_later`` and its cancel) costs several microseconds, paid
    by every message since a time limit is on by default. Here a message costs a heap
    push and a dict entry, and one timer waits for the earliest deadline.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, asyncio.Task[Any]]] = []
        self._live: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")

    async def run(self, awaitable: Awaitable[Any], limit: float) -> Any:
        """Await ``awaitable``; cancel it and raise DeadlineExceeded after ``limit`` seconds."""
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        self._live[task] = deadline
        heapq.heappush(self._heap, (deadline, next(self._order), task))
        if deadline < self._timer_at:
            self._arm(loop, deadline)
        elif len(self._heap) > 2 * len(self._live) + 1024:
            self._compact()
        try:
            return await awaitable
        except asyncio.CancelledError:
            if task not in self._expired:
                raise
            self._expired.discard(task)
            if sys.version_info >= (3, 11) and task.uncancel() > 0:
                raise  # cancelled from outside too (a stop): that wins
            raise DeadlineExceeded from None
        finally:
            self._live.pop(task, None)
            if task in self._expired:  # the call swallowed our cancellation
                self._expired.discard(task)
                if sys.version_info >= (3, 11):
                    task.uncancel()

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = loop.call_at(when, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        self._timer_at = float("inf")
        now = loop.time()
        heap, live = self._heap, self._live
        while heap and heap[0][0] <= now:
            deadline, _, task = heapq.heappop(heap)
            if live.get(task) == deadline:  # still running under this deadline
                del live[task]
                self._expired.add(task)
                task.cancel()
        while heap and live.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)  # finished long ago
        if heap:
            self._arm(loop, heap[0][0])

    def _compact(self) -> None:
        """Drop the entries of finished tasks (they wait in the heap until their deadline)."""
        self._heap = [entry for entry in self._heap if self._live.get(entry[2]) == entry[0]]
        heapq.heapify(self._heap)


def time_limit_exceeded(actor_name: str, limit: float | None) -> TimeLimitExceeded:
    """The error of an actor that ran past its time limit."""
    return TimeLimitExceeded(f"actor {actor_name} exceeded its time limit of {limit} s")
