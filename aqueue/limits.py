"""Limits shared by every worker: how many messages may run at once, or start per period.

A :class:`Limit` is a value; its ``name`` is its identity across actors, modules,
processes and hosts. The :class:`~aqueue.middleware.Limits` middleware applies it, and
the broker holds its tokens (RabbitMQ queues of tokens; in-memory counters in one process).
"""

from __future__ import annotations

import datetime
import math
import re
from dataclasses import dataclass
from typing import Union

__all__ = ["Limit", "Rate", "Tokens"]

#: A rate as given: ``"10/s"``, ``"100/m"``, ``"5000/h"``, ``"5/30s"``, or ``(count, period)``.
RateSpec = Union[str, tuple[int, Union[int, float, datetime.timedelta]]]  # noqa: UP007

_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
_RATE = re.compile(r"\s*(\d+)\s*/\s*(\d*(?:\.\d+)?)\s*([a-z]+)\s*")
_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}
#: The shortest and longest period of a rate, in seconds.
MIN_PERIOD, MAX_PERIOD = 0.1, 86400.0


@dataclass(frozen=True)
class Rate:
    """At most ``count`` starts in any window of ``period`` seconds."""

    count: int
    period: float

    def __str__(self) -> str:
        period = self.period
        for unit, seconds in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
            if period % seconds == 0:
                n = int(period // seconds)
                return f"{self.count}/{'' if n == 1 else n}{unit}"
        return f"{self.count}/{period:g}s"


@dataclass(frozen=True)
class Tokens:
    """One kind of token a limit needs per run, held while the message runs:
    ``"concurrency"`` (free again when the run ends) or ``"rate"`` (free again ``period``
    seconds after the run ended)."""

    limit: str
    kind: str
    count: int
    period: float = 0.0

    @property
    def key(self) -> str:
        """The identity of this pool of tokens: the limit's name and its numbers, so that
        changing the numbers in code makes a new pool (the old one is left unused)."""
        if self.kind == "concurrency":
            return f"{self.limit}.c{self.count}"
        return f"{self.limit}.r{self.count}-{round(self.period * 1000)}ms"


class Limit:
    """A limit on the actors that name it, across every worker using the broker.

    Args:
        name: The limit's identity (letters, digits, ``_ . : -``; at most 100): actors
            in any module or process that name the same limit share it.
        concurrency: At most this many messages under the limit run at once.
        rate: At most N messages under the limit start in any window of the period:
            ``"10/s"``, ``"100/m"``, ``"5000/h"``, ``"5/30s"``, or a tuple ``(count,
            period)`` with the period in seconds or a timedelta (0.1 s to 1 day).

    At least one of ``concurrency`` and ``rate`` is required; both may be given.

    Raises:
        ValueError: a bad name or value.
    """

    __slots__ = ("concurrency", "name", "rate")

    def __init__(
        self, name: str, *, concurrency: int | None = None, rate: RateSpec | None = None
    ) -> None:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(
                f"a limit's name must be 1 to 100 letters, digits or '_.:-', not {name!r}"
            )
        if concurrency is None and rate is None:
            raise ValueError(f"limit {name!r}: give concurrency, rate or both")
        if concurrency is not None and not _positive_int(concurrency):
            raise ValueError(
                f"limit {name!r}: concurrency must be a positive int, not {concurrency!r}"
            )
        self.name = name
        self.concurrency: int | None = concurrency
        self.rate: Rate | None = None if rate is None else _parse_rate(name, rate)

    def tokens(self) -> list[Tokens]:
        """The tokens a run takes, in the order it takes them (concurrency, then rate)."""
        needed = []
        if self.concurrency is not None:
            needed.append(Tokens(self.name, "concurrency", self.concurrency))
        if self.rate is not None:
            needed.append(Tokens(self.name, "rate", self.rate.count, self.rate.period))
        return needed

    def __repr__(self) -> str:
        parts = [repr(self.name)]
        if self.concurrency is not None:
            parts.append(f"concurrency={self.concurrency}")
        if self.rate is not None:
            parts.append(f"rate={str(self.rate)!r}")
        return f"Limit({', '.join(parts)})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Limit):
            return NotImplemented
        return (self.name, self.concurrency, self.rate) == (
            other.name,
            other.concurrency,
            other.rate,
        )

    def __hash__(self) -> int:
        return hash((self.name, self.concurrency, self.rate))


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _parse_rate(name: str, rate: object) -> Rate:
    error = ValueError(
        f"limit {name!r}: rate must be like '10/s', '100/m', '5000/h', '5/30s' or a tuple "
        f"(count, period in seconds), not {rate!r}"
    )
    if isinstance(rate, str):
        match = _RATE.fullmatch(rate.lower())
        if match is None or match.group(3) not in _UNITS:
            raise error
        count = int(match.group(1))
        multiple = float(match.group(2)) if match.group(2) else 1.0
        period = multiple * _UNITS[match.group(3)]
    elif isinstance(rate, tuple) and len(rate) == 2:
        count, seconds = rate
        if isinstance(seconds, datetime.timedelta):
            period = seconds.total_seconds()
        elif isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
            period = float(seconds)
        else:
            raise error
    else:
        raise error
    if not _positive_int(count):
        raise ValueError(f"limit {name!r}: a rate's count must be a positive int, not {count!r}")
    if not (math.isfinite(period) and MIN_PERIOD <= period <= MAX_PERIOD):
        raise ValueError(
            f"limit {name!r}: a rate's period must be {MIN_PERIOD} s to 1 day, not {period!r} s"
        )
    return Rate(count, period)
