"""Middleware: retries, time limits, age limits, callbacks, and the interface for your own."""

from __future__ import annotations

from .age_limit import AgeLimit
from .base import Middleware, SkipMessage
from .callbacks import Callbacks
from .retries import Retries
from .time_limit import TimeLimit

__all__ = [
    "AgeLimit",
    "Callbacks",
    "Middleware",
    "Retries",
    "SkipMessage",
    "TimeLimit",
    "default_middleware",
]


def default_middleware() -> list[Middleware]:
    """A new default stack: AgeLimit, TimeLimit, Retries, Callbacks (in this order).

    Retries comes before Callbacks so that ``on_failure`` is sent only after the
    last retry.
    """
    return [AgeLimit(), TimeLimit(), Retries(), Callbacks()]
