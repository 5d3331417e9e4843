"""Middleware: retries, time limits, age limits, callbacks, replies, task events, and the
interface for your own."""

from __future__ import annotations

from .age_limit import AgeLimit
from .base import Middleware, SkipMessage
from .callbacks import Callbacks
from .events import TaskEvents
from .redeliveries import Redeliveries
from .replies import Replies
from .retries import Retries
from .time_limit import TimeLimit

__all__ = [
    "AgeLimit",
    "Callbacks",
    "Middleware",
    "Redeliveries",
    "Replies",
    "Retries",
    "SkipMessage",
    "TaskEvents",
    "TimeLimit",
    "default_middleware",
]


def default_middleware() -> list[Middleware]:
    """A new default stack: Redeliveries, AgeLimit, TimeLimit, Retries, Callbacks, Replies.

    Redeliveries comes first so that a message that keeps killing its worker is
    stopped before anything else; Retries comes before Callbacks and Replies so that
    ``on_failure`` is sent, and ``call()`` answered, only after the last retry.
    """
    return [Redeliveries(), AgeLimit(), TimeLimit(), Retries(), Callbacks(), Replies()]
