"""Running blocking actors in long-lived threads, interruptible by a time limit.

A hand-off per call through ``anyio.to_thread`` costs a loop round trip, a cancel scope,
a capacity limiter, a wake-up of the loop per result and, with a time limit, a second
wake-up and a timer per call. Here the loop puts a job in a queue that a fixed set of
threads reads, so a thread that finishes takes its next job at once; results come back
in batches, one wake-up of the loop for all the jobs that finished meanwhile; and one
timer on the loop watches every deadline (a heap entry per job, checked when due).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import ctypes
import heapq
import itertools
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from .errors import TimeLimitExceeded

__all__ = ["NotStarted", "ThreadPool"]

#: Seconds an idle thread waits for a job before it ends (a new one starts when needed).
IDLE_SECONDS = 10.0

_QUEUED, _RUNNING, _DONE = 0, 1, 2


class NotStarted(Exception):
    """The job was cancelled, or its ``skip`` check said so, before a thread started it."""


class _Job:
    __slots__ = (
        "context",
        "fn",
        "future",
        "interrupted",
        "limit",
        "lock",
        "skip",
        "started",
        "state",
        "thread_id",
    )

    def __init__(
        self,
        fn: Callable[[], Any],
        future: asyncio.Future[Any],
        limit: float | None,
        skip: Callable[[], bool] | None,
    ) -> None:
        self.fn = fn
        self.future = future
        self.limit = limit
        self.skip = skip
        self.context = contextvars.copy_context()
        self.lock = threading.Lock()
        self.state = _QUEUED
        self.started = 0.0
        self.thread_id = 0
        self.interrupted = False

    def interrupt(self) -> None:
        """Raise TimeLimitExceeded in the thread if the job still runs there (once)."""
        with self.lock:
            if self.state == _RUNNING and not self.interrupted:
                self.interrupted = True
                _set_async_exc(self.thread_id, TimeLimitExceeded)

    def cancel(self) -> bool:
        """Make a job that has not started never start; False if it started already."""
        with self.lock:
            if self.state == _QUEUED:
                self.state = _DONE
                return True
            return False

    def run(self) -> tuple[Any, BaseException | None] | None:
        """Run in a pool thread: (result, error), or None if cancelled before it started."""
        with self.lock:
            if self.state != _QUEUED:
                return None
            if self.skip is not None and _skipped(self.skip):
                self.state = _DONE
                return None, NotStarted()
            self.started = time.monotonic()
            self.thread_id = threading.get_ident()
            self.state = _RUNNING  # last: the loop reads state, then started, without the lock
        try:
            outcome: tuple[Any, BaseException | None] = (self.context.run(self.fn), None)
        except BaseException as exc:
            outcome = (None, exc)
        self.finish()
        del self.fn, self.context  # the arguments, while the deadline heap holds the job
        return outcome

    def finish(self) -> None:
        with self.lock:
            self.state = _DONE
            if self.interrupted:
                # An interrupt that was set but has not fired yet must not escape into
                # the pool's own code.
                _set_async_exc(self.thread_id, None)


def _skipped(skip: Callable[[], bool]) -> bool:
    try:
        return skip()
    except Exception:
        return False


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else None
    )


class ThreadPool:
    """Up to ``size`` threads that run blocking calls for one event loop.

    Threads start when calls wait for one and end after ``IDLE_SECONDS`` without work;
    calls run in the order they were submitted.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._busy = 0  # submitted, result not yet back on the loop
        self._queued: set[_Job] = set()  # submitted through run(), not known to have started
        self._results: collections.deque[tuple[_Job, Any, BaseException | None]] = (
            collections.deque()
        )
        self._wake_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        # Deadlines: (earliest possible deadline, order, job) of jobs with a time limit.
        self._heap: list[tuple[float, int, _Job]] = []
        self._limited = 0
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")

    async def run(
        self,
        fn: Callable[[], Any],
        *,
        time_limit: float | None = None,
        skip: Callable[[], bool] | None = None,
    ) -> Any:
        """Run ``fn`` in a thread, in a copy of the caller's context, and return its result.

        Past ``time_limit`` seconds of running (the clock starts when ``fn`` starts)
        TimeLimitExceeded is raised inside it. ``skip`` is called in the thread before
        ``fn`` starts: if it returns True, ``fn`` does not run and NotStarted is raised,
        as it is for calls still waiting for a thread when ``cancel_waiting()`` is
        called. If the caller is cancelled, a call that has not started never does, and
        one that runs is abandoned (it finishes on its own, or at its time limit).
        """
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use, or a worker started again on another loop
            self._loop = loop
            self._wake_pending = False
            self._heap, self._timer, self._timer_at = [], None, float("inf")
        future = loop.create_future()
        job = _Job(fn, future, time_limit, skip)
        self._busy += 1
        self._jobs.put(job)
        if self._threads < self.size and self._busy > self._threads:
            self._add_thread()
        if time_limit is not None:
            self._watch(loop, time.monotonic() + time_limit, job)
        queued = self._queued
        queued.add(job)
        try:
            return await future
        except asyncio.CancelledError:
            if job.cancel():
                self._forget(job)
            raise
        finally:
            queued.discard(job)

    def cancel_waiting(self) -> None:
        """Calls that wait for a thread raise NotStarted (the worker stops)."""
        for job in list(self._queued):
            if job.cancel():
                self._forget(job)
                if not job.future.done():
                    job.future.set_exception(NotStarted())

    def _forget(self, job: _Job) -> None:
        """On the loop: ``job`` was cancelled before it started; no result comes back."""
        self._busy -= 1
        if job.limit is not None:
            self._limited -= 1

    # -- threads ----------------------------------------------------------------------------

    def _add_thread(self) -> None:
        with self._lock:
            if self._threads >= self.size:
                return
            self._threads += 1
        try:
            threading.Thread(target=self._work, name="aqueue-actor", daemon=True).start()
        except BaseException:
            with self._lock:
                self._threads -= 1
            raise

    def _work(self) -> None:
        job: _Job | None = None
        while True:
            try:
                while True:
                    job = None
                    try:
                        job = self._jobs.get(timeout=IDLE_SECONDS)
                    except queue.Empty:
                        with self._lock:
                            if self._jobs.empty():
                                self._threads -= 1
                                return
                        continue
                    outcome = job.run()
                    if outcome is not None:
                        self._report(job, *outcome)
            except TimeLimitExceeded as exc:
                # The interrupt fired in the pool's code, after the call returned.
                if job is not None and job.state != _DONE:
                    job.finish()
                    self._report(job, None, exc)

    def _report(self, job: _Job, result: Any, error: BaseException | None) -> None:
        """In a pool thread: hand a result to the loop; one wake-up for all pending ones."""
        self._results.append((job, result, error))
        if not self._wake_pending:
            self._wake_pending = True
            loop = self._loop
            assert loop is not None
            # RuntimeError: the loop closed, nobody waits for the result any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        """On the loop: set the results of the calls that finished."""
        self._wake_pending = False
        results = self._results
        while results:
            job, result, error = results.popleft()
            self._busy -= 1
            if job.limit is not None:
                self._limited -= 1
            future = job.future
            if future.done():
                continue  # abandoned: its caller was cancelled
            # RuntimeError: the future of an earlier loop, closed since.
            with contextlib.suppress(RuntimeError):
                if error is None:
                    future.set_result(result)
                else:
                    future.set_exception(error)

    # -- time limits --------------------------------------------------------------------------

    def _watch(self, loop: asyncio.AbstractEventLoop, deadline: float, job: _Job) -> None:
        """Check ``job`` at ``deadline`` (it cannot be due before: it has not started yet)."""
        self._limited += 1
        heapq.heappush(self._heap, (deadline, next(self._order), job))
        if deadline < self._timer_at:
            self._arm(loop, deadline)
        elif len(self._heap) > 2 * self._limited + 1024:
            self._heap = [entry for entry in self._heap if entry[2].state != _DONE]
            heapq.heapify(self._heap)

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = loop.call_later(max(0.0, when - time.monotonic()), self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        self._timer_at = float("inf")
        now = time.monotonic()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, order, job = heapq.heappop(heap)
            state, limit = job.state, job.limit
            assert limit is not None
            if state == _QUEUED:
                heapq.heappush(heap, (now + limit, order, job))
            elif state == _RUNNING:
                due = job.started + limit
                if due <= now:
                    job.interrupt()
                else:
                    heapq.heappush(heap, (due, order, job))
        if heap:
            self._arm(loop, heap[0][0])
