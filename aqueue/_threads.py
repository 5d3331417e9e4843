"""Running blocking actors in threads, interruptible by a time limit."""

from __future__ import annotations

import asyncio
import ctypes
import threading
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread

from .errors import TimeLimitExceeded


class _Call:
    """One call in a thread that the event loop may interrupt once."""

    __slots__ = ("lock", "running", "thread_id")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = False
        self.thread_id = 0

    def interrupt(self) -> bool:
        """Raise TimeLimitExceeded in the thread if the call still runs there."""
        with self.lock:
            if not self.running:
                return False
            _set_async_exc(self.thread_id, TimeLimitExceeded)
            return True


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else None
    )


def _run(call: _Call, started: Callable[[], None], fn: Callable[[], Any]) -> Any:
    with call.lock:
        call.thread_id = threading.get_ident()
        call.running = True
    started()
    try:
        return fn()
    finally:
        with call.lock:
            call.running = False
            # An interrupt that was set but has not fired yet must not escape into
            # the thread pool's own code.
            _set_async_exc(call.thread_id, None)


async def run_in_thread(
    fn: Callable[[], Any], *, limiter: anyio.CapacityLimiter, time_limit: float | None
) -> Any:
    """Run ``fn`` in a worker thread; past ``time_limit`` seconds raise TimeLimitExceeded in it.

    The clock starts when ``fn`` starts in its thread. If the task is cancelled the
    thread is abandoned (it finishes on its own) and CancelledError propagates.
    """
    if time_limit is None:
        return await anyio.to_thread.run_sync(fn, abandon_on_cancel=True, limiter=limiter)
    loop = asyncio.get_running_loop()
    call = _Call()
    timer: asyncio.TimerHandle | None = None

    def arm() -> None:
        nonlocal timer
        timer = loop.call_later(time_limit, call.interrupt)

    def started() -> None:
        loop.call_soon_threadsafe(arm)

    try:
        return await anyio.to_thread.run_sync(
            _run, call, started, fn, abandon_on_cancel=True, limiter=limiter
        )
    finally:
        if timer is not None:
            timer.cancel()
