"""Dead-letter messages that are too old to be worth running."""

from __future__ import annotations

import time
from typing import Any, ClassVar

from .._durations import to_seconds
from ..context import MessageContext
from .base import Middleware, SkipMessage

__all__ = ["AgeLimit"]

MAX_AGE_EXCEEDED = "max-age-exceeded"


class AgeLimit(Middleware):
    """Skip and dead-letter a message older than ``max_age`` when it reaches a worker.

    The age counts from when the message was first sent (``message_timestamp``), so
    time spent in delays and retries counts too.

    Actor option (per message too):
        max_age: Seconds or timedelta; default None (no limit).
    """

    actor_options: ClassVar[frozenset[str]] = frozenset({"max_age"})

    def __init__(self, *, max_age: float | None = None) -> None:
        self.max_age = None if max_age is None else self.normalize_option("max_age", max_age)

    def normalize_option(self, name: str, value: Any) -> Any:
        return None if value is None else to_seconds(value, name=name, allow_zero=False)

    async def before_process_message(self, context: MessageContext) -> None:
        max_age = context.option("max_age", self.max_age)
        if max_age is None:
            return
        age = time.time() - context.message.message_timestamp / 1000
        if age > max_age:
            context.failure_headers["x-aqueue-error"] = (
                f"message is {age:.3f} s old, older than max_age {max_age} s"
            )
            raise SkipMessage(MAX_AGE_EXCEEDED)
