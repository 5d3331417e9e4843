"""Schedules: an actor to call on a cron expression or every so many seconds.

This module holds the value objects only (what to send, and when); the scheduler that
fires them (leader election, the firing loop) is built on top of it.

Cron expressions are parsed and evaluated by `cronsim <https://github.com/cuu508/cronsim>`_
rather than croniter:

- Its stated goal is to behave like Debian's cron, DST transitions included, and it is
  written for :mod:`zoneinfo`; croniter's DST handling with zoneinfo was still being
  fixed in 2025.
- It is typed (``py.typed``, so ``mypy --strict`` checks our calls) and has no
  dependencies; croniter ships no type hints and needs python-dateutil.
- Its maintenance is steady (it runs Healthchecks.io's cron monitoring); croniter's
  maintainer declared it abandoned in December 2024 (the EU CRA); it went on under
  pallets-eco in 2025, while its PyPI page still said "DO NOT USE" into 2026.
- Its errors name the bad field ("Bad minute"), which we pass on.

What it lacks, the ``@hourly``-style aliases, is mapped to fields here. Versions 2.8 and
later need Python 3.11; 2.7 serves Python 3.10. cronsim's extensions (``L``, ``LW``,
``MON#2``) are accepted; a six-field expression (seconds) is not.

Ticks:

- ``cron``: computed in the schedule's timezone as Debian cron does. An expression whose
  minute and hour fields both name values (``30 2 * * *``, ``0 9-17 * * 1-5``) runs on
  wall-clock time: on a spring-forward day a time that does not exist (02:30 in
  Europe/Paris on the last Sunday of March) fires at the first minute that does (03:00
  CEST); on a fall-back day a time that happens twice (02:30 on the last Sunday of
  October) fires once, at its first occurrence (CEST). An expression whose minute or
  hour field starts with ``*`` (``0 * * * *``, ``*/15 * * * *``) runs on real time:
  an hourly schedule fires every real hour, 23 times on a spring-forward day and 25
  times on a fall-back day (at 02:00 CEST and again at 02:00 CET).
- ``every``: ``epoch + k * every`` (the Unix epoch, UTC), with ``every`` rounded to whole
  microseconds, so every process computes the same ticks and they do not drift with
  processing time.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
from cronsim import CronSim, CronSimError

from ._durations import Duration, to_seconds
from .actor import Actor
from .message import Message

__all__ = ["Schedule", "make_schedule", "schedule"]

#: The shortest ``every``, in seconds.
MIN_EVERY = 0.1

#: The longest schedule name, in UTF-8 bytes (the message id must fit AMQP's 255 bytes).
MAX_NAME_BYTES = 200

#: The aliases cron accepts for common expressions.
CRON_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_UTC = datetime.timezone.utc
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=_UTC)
_MICROSECOND = datetime.timedelta(microseconds=1)


@dataclass(frozen=True, eq=False)
class Schedule:
    """An actor to call at each tick of a cron expression or of a fixed period.

    Build it with :func:`aqueue.schedule` or :meth:`Broker.schedule`, not directly.

    Attributes:
        name: Unique per broker; the message ids of its ticks start with it.
        actor: The actor to call.
        cron: The cron expression as given (five fields, or an alias such as
            ``"@hourly"``), or None.
        every: The period in seconds, or None.
        args: Positional arguments of each call.
        kwargs: Keyword arguments of each call.
        timezone: The zoneinfo key cron ticks are computed in.
        misfire_grace: How late, in seconds, a missed tick may still be fired.
    """

    name: str
    actor: Actor[..., Any]
    cron: str | None
    every: float | None
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    timezone: str = "UTC"
    misfire_grace: float = 60.0
    _fields: str | None = field(init=False, repr=False)
    _zone: datetime.tzinfo = field(init=False, repr=False)
    _period: datetime.timedelta | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_zone", _zone_of(self.timezone))
        fields = None if self.cron is None else _cron_fields(self.cron)
        object.__setattr__(self, "_fields", fields)
        period = None if self.every is None else datetime.timedelta(seconds=self.every)
        object.__setattr__(self, "_period", period)

    def next_tick(self, after: datetime.datetime) -> datetime.datetime:
        """The first tick strictly after ``after`` (an aware datetime), as an aware UTC datetime.

        Raises:
            ValueError: ``after`` is naive, or a cron expression has no tick in the 50
                years after it.
        """
        _check_aware(after, "after")
        if self._period is not None:
            period = self._period // _MICROSECOND
            elapsed = (after - _EPOCH) // _MICROSECOND
            return _EPOCH + (elapsed // period + 1) * period * _MICROSECOND
        assert self._fields is not None
        after = after.astimezone(_UTC)  # compared in UTC: a comparison in one zone ignores fold
        for local in CronSim(self._fields, after.astimezone(self._zone)):
            # On wall-clock time the first 02:30 of a fall-back day comes after 02:10 CET.
            if (tick := local.astimezone(_UTC)) > after:
                return tick
        raise ValueError(f"cron {self.cron!r} has no tick in the 50 years after {after}")

    def message(self, tick: datetime.datetime) -> Message:
        """The message of ``tick``: the same tick always gives the same message id.

        The id is ``"{name}@{tick}"``, the tick in UTC and ISO 8601 (for example
        ``"nightly@2026-12-04T10:00:00Z"``, with microseconds when it has any); the
        message's options hold the same string as ``"tick"``.
        """
        _check_aware(tick, "tick")
        stamp = tick_id(tick)
        message = self.actor.message_with_options(args=self.args, kwargs=dict(self.kwargs))
        return msgspec.structs.replace(
            message, message_id=f"{self.name}@{stamp}", options={"tick": stamp}
        )

    def describe(self) -> str:
        """The schedule in words: ``"cron 0 * * * * (Europe/Paris)"`` or ``"every 10 s"``."""
        if self.every is not None:
            every = self.every
            return f"every {int(every) if every.is_integer() else every} s"
        return f"cron {self.cron} ({self.timezone})"


def tick_id(tick: datetime.datetime) -> str:
    """``tick`` in UTC as ISO 8601 with a ``Z``: ``2026-12-04T10:00:00Z`` (or ``...00.5Z``)."""
    utc = tick.astimezone(_UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="seconds" if utc.microsecond == 0 else "microseconds") + "Z"


def make_schedule(
    actor: Actor[..., Any],
    *,
    cron: str | None = None,
    every: Duration | None = None,
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: dict[str, Any] | None = None,
    name: str | None = None,
    timezone: str = "UTC",
    misfire_grace: Duration = 60.0,
) -> Schedule:
    """Validate a schedule's parts and build it (without registering it anywhere).

    Raises:
        ValueError: neither or both of ``cron`` and ``every``, a bad cron expression,
            period, timezone, name or ``misfire_grace``.
        ValidationError: ``args`` and ``kwargs`` do not fit the actor's signature.
        TypeError: ``actor`` is not an actor.
    """
    if not isinstance(actor, Actor):
        raise TypeError(f"schedule: {actor!r} is not an actor (decorate it with @actor)")
    if (cron is None) == (every is None):
        raise ValueError(
            f"schedule of actor {actor.actor_name!r}: give either cron=... or every=..., "
            f"{'not both' if cron is not None else 'one of them'}"
        )
    if cron is not None and not isinstance(cron, str):
        raise ValueError(f"cron must be a str such as '0 * * * *', not {cron!r}")
    seconds = None if every is None else _every_seconds(every)
    name = actor.actor_name if name is None else name
    _check_name(name)
    try:
        grace = to_seconds(misfire_grace, name="misfire_grace")
    except ValueError as exc:
        raise ValueError(f"schedule {name!r}: {exc}") from None
    # Validated now: a mistake shows at import time, not at the first tick.
    actor._message(args, kwargs, {})  # every argument: no pipeline fills a schedule's last one
    scheduled = Schedule(
        name=name,
        actor=actor,
        cron=cron,
        every=seconds,
        args=tuple(args),
        kwargs={} if kwargs is None else dict(kwargs),
        timezone=timezone,
        misfire_grace=grace,
    )
    if cron is not None:
        scheduled.next_tick(datetime.datetime.now(_UTC))  # one that never fires is an error
    return scheduled


def schedule(
    actor: Actor[..., Any],
    *,
    cron: str | None = None,
    every: Duration | None = None,
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: dict[str, Any] | None = None,
    name: str | None = None,
    timezone: str = "UTC",
    misfire_grace: Duration = 60.0,
) -> Schedule:
    """Call ``actor`` periodically: on a cron expression, or every so many seconds.

    The schedule is registered on the actor's broker (see :meth:`Broker.schedule`);
    the scheduler of a worker fires each tick once across all processes.

    ``aqueue.schedule(cleanup, cron="0 3 * * *", timezone="Europe/Paris")`` calls
    ``cleanup()`` at 03:00 Paris time every day; ``aqueue.schedule(poll, every=10,
    args=("feed",))`` calls ``poll("feed")`` every 10 seconds.

    Args:
        actor: The actor to call.
        cron: A five-field cron expression (minute hour day-of-month month
            day-of-week), or one of ``@yearly``, ``@annually``, ``@monthly``,
            ``@weekly``, ``@daily``, ``@midnight``, ``@hourly``.
        every: A period in seconds (or a timedelta), at least 0.1 s. Ticks fall on
            multiples of it counted from the Unix epoch.
        args: Positional arguments of each call, validated against the actor now.
        kwargs: Keyword arguments of each call, validated against the actor now.
        name: Unique per broker (default: the actor's name); no ``"@"``.
        timezone: The zoneinfo key cron ticks are computed in (default ``"UTC"``);
            DST changes are handled as Debian's cron does.
        misfire_grace: A tick missed while no scheduler ran is fired late if it is at
            most this many seconds old, else skipped (default 60).

    Raises:
        ValueError: neither or both of ``cron`` and ``every``, a bad cron expression
            (the field is named), period, timezone or name, or a name already used.
        ValidationError: ``args`` and ``kwargs`` do not fit the actor's signature.
    """
    return actor.broker.schedule(
        actor,
        cron=cron,
        every=every,
        args=args,
        kwargs=kwargs,
        name=name,
        timezone=timezone,
        misfire_grace=misfire_grace,
    )


def _cron_fields(cron: str) -> str:
    """The five fields of ``cron`` (aliases replaced); ValueError naming a bad field."""
    expression = cron.strip()
    if expression.startswith("@"):
        fields = CRON_ALIASES.get(expression.lower())
        if fields is None:
            raise ValueError(f"cron {cron!r}: unknown alias (accepted: {', '.join(CRON_ALIASES)})")
        return fields
    count = len(expression.split())
    if count != 5:
        raise ValueError(
            f"cron {cron!r}: expected 5 fields (minute hour day-of-month month "
            f"day-of-week), got {count}"
        )
    try:
        CronSim(expression, datetime.datetime(2000, 1, 1, tzinfo=_UTC))
    except CronSimError as exc:
        what = str(exc).removeprefix("Bad ")
        raise ValueError(f"cron {cron!r}: bad {what} field") from None
    return expression


def _zone_of(key: str) -> datetime.tzinfo:
    if not isinstance(key, str):
        raise ValueError(f"timezone must be a zoneinfo key such as 'Europe/Paris', not {key!r}")
    if key == "UTC":
        return _UTC  # needs no tz database, and cronsim takes its fast path
    try:
        return ZoneInfo(key)
    except (ValueError, KeyError, OSError):  # ZoneInfoNotFoundError is a KeyError
        raise ValueError(
            f"unknown timezone {key!r} (use a zoneinfo key such as 'Europe/Paris')"
        ) from None


def _every_seconds(every: Duration) -> float:
    seconds = to_seconds(every, name="every")
    if round(seconds * 1_000_000) < MIN_EVERY * 1_000_000:
        raise ValueError(f"every must be at least {MIN_EVERY} seconds, not {every!r}")
    return seconds


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"schedule name must be a non-empty str, not {name!r}")
    if "@" in name:
        raise ValueError(f"schedule name {name!r} must not contain '@' (it ends at the tick)")
    if not name.isprintable() or len(name.encode()) > MAX_NAME_BYTES:
        raise ValueError(
            f"schedule name {name[:40]!r} must be printable and at most {MAX_NAME_BYTES} bytes"
        )


def _check_aware(value: datetime.datetime, what: str) -> None:
    if not isinstance(value, datetime.datetime) or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, not {value!r}")
