"""Declaring schedules: their ticks (cron, every, timezones, DST), messages and bad input."""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import aqueue
from aqueue.schedules import Schedule, make_schedule

UTC = datetime.timezone.utc
PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")


def utc(*parts: int) -> datetime.datetime:
    return datetime.datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def ticks(
    schedule: Schedule, start: datetime.datetime, end: datetime.datetime
) -> list[datetime.datetime]:
    """The ticks of ``schedule`` after ``start`` and before ``end``."""
    found = []
    tick = schedule.next_tick(start)
    while tick < end:
        found.append(tick)
        tick = schedule.next_tick(tick)
    return found


@pytest.fixture
def broker() -> aqueue.InMemoryBroker:
    return aqueue.InMemoryBroker()


@pytest.fixture
def job(broker: aqueue.InMemoryBroker) -> aqueue.Actor[..., None]:
    @broker.actor
    def report(kind: str = "daily", limit: int = 10) -> None:
        pass

    return report


@pytest.fixture
def every(job: aqueue.Actor[..., None]) -> Callable[[Any], Schedule]:
    """Builds a schedule of ``job`` every so many seconds (not registered)."""
    return lambda period: make_schedule(job, every=period)


@pytest.fixture
def cron(job: aqueue.Actor[..., None]) -> Callable[..., Schedule]:
    """Builds a cron schedule of ``job`` (not registered)."""
    return lambda expression, timezone="UTC": make_schedule(job, cron=expression, timezone=timezone)


# -- every -----------------------------------------------------------------------------------


def test_every_ticks_on_multiples_of_the_period_strictly_after(every: Any) -> None:
    schedule = every(10)
    assert schedule.next_tick(utc(2026, 1, 1, 10, 0, 5)) == utc(2026, 1, 1, 10, 0, 10)
    assert schedule.next_tick(utc(2026, 1, 1, 10, 0, 10)) == utc(2026, 1, 1, 10, 0, 20)
    assert schedule.next_tick(utc(2026, 1, 1, 10, 0, 9, 999999)) == utc(2026, 1, 1, 10, 0, 10)


def test_every_is_anchored_to_the_epoch_not_to_a_day(every: Any) -> None:
    schedule = every(7)
    # 2026-01-02 00:00 UTC is 1767312000 s after the epoch, 6 more than a multiple of 7.
    tick = schedule.next_tick(utc(2026, 1, 2))
    assert tick == utc(2026, 1, 2, 0, 0, 1)
    assert (tick - utc(1970, 1, 1)) % datetime.timedelta(seconds=7) == datetime.timedelta(0)


def test_every_does_not_drift_with_processing_time(every: Any) -> None:
    schedule = every(60)
    tick = utc(2026, 1, 1, 12)
    for late in [0.5, 13, 59.9]:  # fired this late, the next tick stays on the grid
        next_tick = schedule.next_tick(tick + datetime.timedelta(seconds=late))
        assert next_tick == tick + datetime.timedelta(seconds=60)
        tick = next_tick


def test_every_below_a_second_and_as_timedelta(every: Any) -> None:
    quarter = every(0.25)
    start = utc(2026, 1, 1, 10, 0, 0, 100000)
    assert ticks(quarter, start, utc(2026, 1, 1, 10, 0, 1)) == [
        utc(2026, 1, 1, 10, 0, 0, 250000),
        utc(2026, 1, 1, 10, 0, 0, 500000),
        utc(2026, 1, 1, 10, 0, 0, 750000),
    ]
    tenth = every(datetime.timedelta(milliseconds=100))
    assert tenth.every == 0.1
    assert len(ticks(tenth, utc(2026, 1, 1), utc(2026, 1, 1, 0, 0, 10))) == 99


def test_every_accepts_an_aware_datetime_of_any_zone(every: Any) -> None:
    schedule = every(3600)
    after = datetime.datetime(2026, 7, 1, 12, 30, tzinfo=PARIS)  # 10:30 UTC
    tick = schedule.next_tick(after)
    assert tick == utc(2026, 7, 1, 11)
    assert tick.tzinfo is UTC


# -- cron ------------------------------------------------------------------------------------


def test_cron_ticks_strictly_after_in_utc(cron: Any) -> None:
    schedule = cron("*/15 * * * *")
    assert schedule.next_tick(utc(2026, 5, 13, 10, 7)) == utc(2026, 5, 13, 10, 15)
    assert schedule.next_tick(utc(2026, 5, 13, 10, 15)) == utc(2026, 5, 13, 10, 30)
    assert schedule.next_tick(utc(2026, 5, 13, 23, 50)) == utc(2026, 5, 14, 0, 0)
    assert schedule.next_tick(utc(2026, 5, 13, 10, 7)).tzinfo is UTC


@pytest.mark.parametrize(
    ("alias", "expected"),
    [
        ("@hourly", utc(2026, 5, 13, 11)),
        ("@daily", utc(2026, 5, 14)),
        ("@midnight", utc(2026, 5, 14)),
        ("@weekly", utc(2026, 5, 17)),  # the next Sunday
        ("@monthly", utc(2026, 6, 1)),
        ("@yearly", utc(2027, 1, 1)),
        ("@annually", utc(2027, 1, 1)),
        ("@HOURLY", utc(2026, 5, 13, 11)),
    ],
)
def test_cron_aliases(cron: Any, alias: str, expected: datetime.datetime) -> None:
    schedule = cron(alias)
    assert schedule.next_tick(utc(2026, 5, 13, 10, 20)) == expected  # a Wednesday
    assert schedule.cron == alias  # kept as given


def test_cron_ticks_in_the_schedules_timezone(cron: Any) -> None:
    tokyo = cron("0 9 * * 1-5", timezone="Asia/Tokyo")
    # Friday 2026-05-15 09:00 in Tokyo is 00:00 UTC; then Monday.
    assert tokyo.next_tick(utc(2026, 5, 14, 1)) == utc(2026, 5, 15)
    assert tokyo.next_tick(utc(2026, 5, 15)) == utc(2026, 5, 18)
    new_york = cron("@daily", timezone="America/New_York")
    assert new_york.next_tick(utc(2026, 1, 10, 12)) == utc(2026, 1, 11, 5)  # EST
    assert new_york.next_tick(utc(2026, 7, 10, 12)) == utc(2026, 7, 11, 4)  # EDT


def test_cron_on_a_spring_forward_day_fires_a_skipped_time_when_the_clock_resumes(
    cron: Any,
) -> None:
    # Europe/Paris, 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:30 does not exist.
    schedule = cron("30 2 * * *", timezone="Europe/Paris")
    assert ticks(schedule, utc(2026, 3, 27, 12), utc(2026, 3, 31)) == [
        utc(2026, 3, 28, 1, 30),  # 02:30 CET
        utc(2026, 3, 29, 1, 0),  # 03:00 CEST, as Debian's cron
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
    ]
    # America/New_York, 2026-03-08: 02:00 EST becomes 03:00 EDT.
    schedule = cron("30 2 * * *", timezone="America/New_York")
    assert ticks(schedule, utc(2026, 3, 7), utc(2026, 3, 9, 12)) == [
        utc(2026, 3, 7, 7, 30),  # 02:30 EST
        utc(2026, 3, 8, 7, 0),  # 03:00 EDT
        utc(2026, 3, 9, 6, 30),  # 02:30 EDT
    ]


def test_cron_on_a_fall_back_day_fires_a_repeated_time_once(cron: Any) -> None:
    # Europe/Paris, 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:00-03:00 happens twice.
    daily = cron("30 2 * * *", timezone="Europe/Paris")
    assert ticks(daily, utc(2026, 10, 24, 12), utc(2026, 10, 27)) == [
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST, the first one; not 02:30 CET (01:30 UTC)
        utc(2026, 10, 26, 1, 30),  # 02:30 CET
    ]
    # From inside the repeated hour (02:10 CET, after the first 02:30): the next day.
    second_pass = datetime.datetime(2026, 10, 25, 2, 10, fold=1, tzinfo=PARIS)
    assert daily.next_tick(second_pass) == utc(2026, 10, 26, 1, 30)
    # A job at fixed hours: each wall-clock hour once.
    night = cron("0 1-3 * * *", timezone="Europe/Paris")
    assert ticks(night, utc(2026, 10, 24, 12), utc(2026, 10, 25, 12)) == [
        utc(2026, 10, 24, 23),  # 01:00 CEST
        utc(2026, 10, 25, 0),  # 02:00 CEST
        utc(2026, 10, 25, 2),  # 03:00 CET
    ]
    # America/New_York, 2026-11-01: 02:00 EDT becomes 01:00 EST.
    new_york = cron("30 1 * * *", timezone="America/New_York")
    assert ticks(new_york, utc(2026, 10, 31, 12), utc(2026, 11, 2, 12)) == [
        utc(2026, 11, 1, 5, 30),  # 01:30 EDT, once
        utc(2026, 11, 2, 6, 30),  # 01:30 EST
    ]


def test_cron_every_hour_runs_on_real_time_across_dst(cron: Any) -> None:
    # As Debian's cron: a schedule with "*" in its hour field fires every real hour,
    # 25 times on a fall-back day (02:00 CEST and 02:00 CET) and 23 on a spring-forward day.
    hourly = cron("@hourly", timezone="Europe/Paris")
    fall_back_day = ticks(hourly, utc(2026, 10, 24, 21, 59), utc(2026, 10, 25, 22, 59))
    assert fall_back_day == [utc(2026, 10, 24, 22) + datetime.timedelta(hours=h) for h in range(25)]
    local = [t.astimezone(PARIS).strftime("%H:%M%Z") for t in fall_back_day[1:5]]
    assert local == ["01:00CEST", "02:00CEST", "02:00CET", "03:00CET"]
    spring_day = ticks(hourly, utc(2026, 3, 28, 22, 59), utc(2026, 3, 29, 21, 59))
    assert spring_day == [utc(2026, 3, 28, 23) + datetime.timedelta(hours=h) for h in range(23)]


# -- messages --------------------------------------------------------------------------------


def test_message_of_a_tick_has_a_deterministic_id_and_the_tick_in_its_options(
    broker: aqueue.InMemoryBroker, job: aqueue.Actor[..., None]
) -> None:
    schedule = broker.schedule(
        job, cron="0 * * * *", args=("weekly",), kwargs={"limit": 3}, name="reports"
    )
    tick = utc(2026, 12, 4, 10)
    first, again = schedule.message(tick), schedule.message(tick)
    assert first.message_id == again.message_id == "reports@2026-12-04T10:00:00Z"
    assert first.options == {"tick": "2026-12-04T10:00:00Z"}
    assert (first.actor_name, first.queue_name) == ("report", "default")
    assert (first.args, first.kwargs) == (("weekly",), {"limit": 3})
    # The same instant in another zone is the same tick; another tick is another id.
    paris = datetime.datetime(2026, 12, 4, 11, tzinfo=PARIS)
    assert schedule.message(paris).message_id == first.message_id
    assert schedule.message(utc(2026, 12, 4, 11)).message_id == "reports@2026-12-04T11:00:00Z"
    # Messages do not share their kwargs with the schedule.
    first.kwargs["limit"] = 99
    assert schedule.message(tick).kwargs == {"limit": 3}
    with pytest.raises(ValueError, match="tick must be a timezone-aware datetime"):
        schedule.message(datetime.datetime(2026, 12, 4, 10))


def test_message_id_of_a_sub_second_tick_has_microseconds(every: Any) -> None:
    schedule = every(0.5)
    tick = schedule.next_tick(utc(2026, 12, 4, 10))
    message = schedule.message(tick)
    assert message.message_id == "report@2026-12-04T10:00:00.500000Z"
    assert message.options["tick"] == "2026-12-04T10:00:00.500000Z"


def test_describe(cron: Any, every: Any) -> None:
    assert cron("0 * * * *", timezone="Europe/Paris").describe() == "cron 0 * * * * (Europe/Paris)"
    assert cron("@daily").describe() == "cron @daily (UTC)"
    assert every(10).describe() == "every 10 s"
    assert every(datetime.timedelta(milliseconds=250)).describe() == "every 0.25 s"


# -- registration ----------------------------------------------------------------------------


def test_schedule_registers_on_the_actors_broker(
    broker: aqueue.InMemoryBroker, job: aqueue.Actor[..., None]
) -> None:
    hourly = aqueue.schedule(job, cron="@hourly")
    assert isinstance(hourly, aqueue.Schedule)
    assert (hourly.name, hourly.timezone, hourly.misfire_grace) == ("report", "UTC", 60.0)
    nightly = broker.schedule(
        job, cron="0 3 * * *", name="nightly", misfire_grace=datetime.timedelta(minutes=5)
    )
    assert nightly.misfire_grace == 300.0
    assert broker.schedules == {"report": hourly, "nightly": nightly}


def test_two_schedules_with_one_name_on_a_broker_are_an_error(
    broker: aqueue.InMemoryBroker, job: aqueue.Actor[..., None]
) -> None:
    broker.schedule(job, cron="@hourly")
    with pytest.raises(ValueError, match="a schedule named 'report' is already registered"):
        aqueue.schedule(job, every=60)
    broker.schedule(job, cron="@daily", name="nightly")
    with pytest.raises(ValueError, match="'nightly' is already registered"):
        broker.schedule(job, cron="@weekly", name="nightly")
    assert set(broker.schedules) == {"report", "nightly"}
    # Another broker has schedules of its own.
    other = aqueue.InMemoryBroker()
    other.schedule(other.actor(actor_name="report")(lambda: None), cron="@hourly")
    assert set(other.schedules) == {"report"}


def test_an_actor_of_another_broker_is_an_error(job: aqueue.Actor[..., None]) -> None:
    other = aqueue.InMemoryBroker()
    with pytest.raises(ValueError, match="belongs to another broker"):
        other.schedule(job, cron="@hourly")
    assert other.schedules == {}


# -- bad input -------------------------------------------------------------------------------


def test_cron_and_every_exactly_one(broker: aqueue.InMemoryBroker, job: Any) -> None:
    with pytest.raises(ValueError, match=r"give either cron=\.\.\. or every=\.\.\., not both"):
        broker.schedule(job, cron="@hourly", every=60)
    with pytest.raises(ValueError, match=r"give either cron=\.\.\. or every=\.\.\., one of"):
        broker.schedule(job)
    assert broker.schedules == {}


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("61 * * * *", "bad minute field"),
        ("* 24 * * *", "bad hour field"),
        ("* * 0 * *", "bad day-of-month field"),
        ("0 0 30 2 *", "bad day-of-month field"),
        ("* * * 13 *", "bad month field"),
        ("* * * * 8", "bad day-of-week field"),
        ("*/0 * * * *", "bad minute field"),
        ("every hour", "expected 5 fields"),
        ("0 * * * * *", "expected 5 fields"),
        ("", "expected 5 fields"),
        ("@reboot", "unknown alias"),
    ],
)
def test_a_bad_cron_expression_names_the_expression_and_field(
    broker: aqueue.InMemoryBroker, job: Any, expression: str, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(f"cron {expression!r}: {message}")) as caught:
        broker.schedule(job, cron=expression)
    assert expression in str(caught.value)
    assert broker.schedules == {}


def test_a_cron_expression_that_never_fires_is_an_error(job: Any) -> None:
    # Every minute of the 1st and the 21st, when also the last Monday of the month.
    with pytest.raises(ValueError, match="has no tick in the 50 years"):
        make_schedule(job, cron="* * */20 * 1L")
    with pytest.raises(ValueError, match="cron must be a str"):
        make_schedule(job, cron=3600)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("period", "message"),
    [
        (True, "every must be a number of seconds or a datetime.timedelta, not True"),
        ("60", "every must be a number of seconds or a datetime.timedelta"),
        (0, "every must be at least 0.1 seconds, not 0"),
        (0.05, "every must be at least 0.1 seconds"),
        (datetime.timedelta(milliseconds=50), "every must be at least 0.1 seconds"),
        (-5, "every must be >= 0 seconds"),
        (float("nan"), "every must be >= 0 seconds"),
    ],
)
def test_a_bad_period_is_an_error(job: Any, period: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_schedule(job, every=period)


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../../etc/passwd", "", 2])
def test_an_unknown_timezone_is_an_error_naming_it(job: Any, zone: Any) -> None:
    with pytest.raises(ValueError, match="timezone") as caught:
        make_schedule(job, cron="@daily", timezone=zone)
    assert repr(zone) in str(caught.value)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "schedule name must be a non-empty str"),
        (7, "schedule name must be a non-empty str, not 7"),
        ("nightly@paris", "must not contain '@'"),
        ("a\nb", "must be printable"),
        ("x" * 201, "at most 200 bytes"),
    ],
)
def test_a_bad_name_is_an_error(job: Any, name: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_schedule(job, every=1, name=name)


@pytest.mark.parametrize("grace", [-1, True, "60"])
def test_a_bad_misfire_grace_is_an_error(job: Any, grace: Any) -> None:
    with pytest.raises(ValueError, match="misfire_grace"):
        make_schedule(job, every=1, misfire_grace=grace)


def test_arguments_that_do_not_fit_the_actor_are_a_validation_error(
    broker: aqueue.InMemoryBroker, job: Any
) -> None:
    with pytest.raises(aqueue.ValidationError, match="report"):
        broker.schedule(job, every=60, args=("daily", 10, "extra"))
    with pytest.raises(aqueue.ValidationError, match="colour"):
        broker.schedule(job, every=60, kwargs={"colour": "red"})
    with pytest.raises(aqueue.ValidationError, match="limit"):
        broker.schedule(job, every=60, kwargs={"limit": "ten"})
    assert broker.schedules == {}


def test_something_other_than_an_actor_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="is not an actor"):
        make_schedule(print, every=60)  # type: ignore[arg-type]


def test_next_tick_needs_an_aware_datetime(every: Any) -> None:
    with pytest.raises(ValueError, match="after must be a timezone-aware datetime"):
        every(60).next_tick(datetime.datetime(2026, 1, 1))
