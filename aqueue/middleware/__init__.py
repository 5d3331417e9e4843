"""Middleware: retries, time limits, age limits, callbacks, replies, priorities, task events,
and the interface for your own."""

from __future__ import annotations

from .age_limit import AgeLimit
from .base import Middleware, SkipMessage
from .callbacks import Callbacks
from .events import TaskEvents
from .groups import Groups
from .limits import Limits
from .pipelines import Pipelines
from .priorities import Priorities
from .redeliveries import Redeliveries
from .replies import Replies
from .retries import Retries
from .time_limit import TimeLimit

__all__ = [
    "AgeLimit",
    "Callbacks",
    "Groups",
    "Limits",
    "Middleware",
    "Pipelines",
    "Priorities",
    "Redeliveries",
    "Replies",
    "Retries",
    "SkipMessage",
    "TaskEvents",
    "TimeLimit",
    "default_middleware",
]


def default_middleware() -> list[Middleware]:
    """A new default stack: Redeliveries, AgeLimit, TimeLimit, Retries, Pipelines, Groups,
    Callbacks, Replies, Priorities, Limits.

    Redeliveries comes first so that a message that keeps killing its worker is
    stopped before anything else; Retries comes before Callbacks and Replies so that
    ``on_failure`` is sent, and ``call()`` answered, only after the last retry; Pipelines
    and Groups come after Retries (only final outcomes count) and before Callbacks and
    Replies, which then see a result that could not be piped as a failure; Limits
    comes last so that no other middleware skips a message after it took its tokens.
    """
    return [
        Redeliveries(),
        AgeLimit(),
        TimeLimit(),
        Retries(),
        Pipelines(),
        Groups(),
        Callbacks(),
        Replies(),
        Priorities(),
        Limits(),
    ]
