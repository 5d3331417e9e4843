"""Retries with exponential backoff and jitter, through broker-held delays."""

from __future__ import annotations

import datetime
import random
import time
from collections.abc import Callable
from typing import Any, ClassVar

import msgspec

from .._durations import to_seconds
from ..context import MessageContext
from .base import Middleware

__all__ = ["Retries"]

RetryWhen = Callable[[int, BaseException], bool]


class Retries(Middleware):
    """Retry failed messages with exponential backoff and jitter, then dead-letter them.

    A retry is a new publish of the same message (same ``message_id``, the count in
    ``options["retries"]``) through the broker's delay queues; the failed delivery
    is acked only after that publish was confirmed, so a crash in between may run
    the message twice but never loses it.

    The n-th retry waits ``uniform(0.5, 1) * min(max_backoff, min_backoff * 2**n)``
    seconds, never less than ``min_backoff``.

    Actor options (per message too, except ``retry_when`` and ``throws``):
        max_retries: Retries before the message is dead-lettered (default 20); None for
            no limit, as in Dramatiq.
        min_backoff: Shortest wait before a retry, seconds or timedelta (default 15 s).
        max_backoff: Longest wait before a retry (default 1 hour).
        retry_when: ``(retries_so_far, exception) -> bool``; replaces the count rule.
        throws: Exception types that are dead-lettered at once, without retry.
    """

    actor_options: ClassVar[frozenset[str]] = frozenset(
        {"max_retries", "min_backoff", "max_backoff", "retry_when", "throws"}
    )
    actor_only_options: ClassVar[frozenset[str]] = frozenset({"retry_when", "throws"})

    def __init__(
        self,
        *,
        max_retries: int | None = 20,
        min_backoff: float = 15.0,
        max_backoff: float = 3600.0,
    ) -> None:
        self.max_retries = self.normalize_option("max_retries", max_retries)
        self.min_backoff = self.normalize_option("min_backoff", min_backoff)
        self.max_backoff = self.normalize_option("max_backoff", max_backoff)

    def normalize_option(self, name: str, value: Any) -> Any:
        if name == "max_retries":
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 0
            ):
                raise ValueError(f"max_retries must be an int >= 0 or None, not {value!r}")
            return value
        if name in ("min_backoff", "max_backoff"):
            return to_seconds(value, name=name)
        if name == "retry_when":
            if not callable(value):
                raise ValueError("retry_when must be a callable (retries, exception) -> bool")
            return value
        if name == "throws":
            types = value if isinstance(value, tuple) else (value,)
            if not all(isinstance(t, type) and issubclass(t, BaseException) for t in types):
                raise ValueError(f"throws must be an exception type or a tuple of them: {value!r}")
            return types
        return value

    def backoff(self, retries: int, min_backoff: float, max_backoff: float) -> float:
        """Seconds to wait before retry number ``retries + 1``."""
        upper = min(max_backoff, min_backoff * 2.0 ** (retries + 1))
        return min(max_backoff, max(min_backoff, upper * random.uniform(0.5, 1.0)))

    async def after_process_message(self, context: MessageContext) -> None:
        exc = context.exception
        if exc is None:
            return
        message = context.message
        retries = int(message.options.get("retries", 0))
        now_ms = int(time.time() * 1000)
        first_failed_at = int(message.options.get("first_failed_at", now_ms))
        context.failure_headers["x-aqueue-retries"] = str(retries)
        context.failure_headers["x-aqueue-first-failed-at"] = _iso(first_failed_at)

        throws = context.option("throws", ())
        if throws and isinstance(exc, throws):
            return
        retry_when: RetryWhen | None = context.option("retry_when")
        if retry_when is not None:
            if not retry_when(retries, exc):
                return
        else:
            max_retries = context.option("max_retries", self.max_retries)
            if max_retries is not None and retries >= max_retries:
                return

        min_backoff = context.option("min_backoff", self.min_backoff)
        max_backoff = max(min_backoff, context.option("max_backoff", self.max_backoff))
        delay = self.backoff(retries, min_backoff, max_backoff)
        options = {**message.options, "retries": retries + 1, "first_failed_at": first_failed_at}
        retry = msgspec.structs.replace(message, options=options)
        await context.broker.enqueue(retry, delay=delay)
        context.broker._retry_scheduled(retry, delay)
        context.retry_scheduled = True


def _iso(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).isoformat()
