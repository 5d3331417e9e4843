"""Time limits for actors: cancel async actors, interrupt blocking ones in their thread."""

from __future__ import annotations

from typing import Any, ClassVar

from .._durations import to_seconds
from ..context import MessageContext
from .base import Middleware

__all__ = ["TimeLimit"]


class TimeLimit(Middleware):
    """Stop an actor that runs longer than ``time_limit`` seconds.

    The clock starts when the actor starts running, not while its message waits for
    a free thread. An ``async def`` actor is cancelled; a blocking actor gets
    :class:`~aqueue.TimeLimitExceeded` raised inside its thread at its next Python
    bytecode (a long call into C, such as one ``time.sleep`` or a socket read
    without timeout, is interrupted only when it returns). Either way the failure is
    :class:`~aqueue.TimeLimitExceeded` and goes through retries and dead-lettering.

    Actor option (per message too):
        time_limit: Seconds or timedelta (default 600 s, well below RabbitMQ's
            default 30-minute ``consumer_timeout``); None for no limit.
    """

    actor_options: ClassVar[frozenset[str]] = frozenset({"time_limit"})

    def __init__(self, *, time_limit: float | None = 600.0) -> None:
        self.time_limit = self.normalize_option("time_limit", time_limit)

    def normalize_option(self, name: str, value: Any) -> Any:
        return None if value is None else to_seconds(value, name=name, allow_zero=False)

    def limit_for(self, context: MessageContext) -> float | None:
        """Seconds the actor of ``context`` may run, or None."""
        value: float | None = context.option("time_limit", self.time_limit)
        return value
