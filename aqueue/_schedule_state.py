"""What the scheduler keeps in RabbitMQ (each schedule's lease and latest status), and the
rows ``aqueue schedules`` and the dashboard show from them."""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from .schedules import tick_id

if TYPE_CHECKING:
    from .broker import Broker

__all__ = [
    "Lease",
    "ScheduleRow",
    "schedule_rows",
    "ScheduleStatus",
    "decode_lease",
    "encode_json",
    "holder_name",
    "iso_utc",
    "lease_queue_name",
    "parse_tick",
    "read_status",
    "status_queue_name",
]

_UTC = datetime.timezone.utc


class Lease(msgspec.Struct, kw_only=True):
    schedule: str
    last_tick: str | None = None  # ISO 8601 UTC of the last tick fired
    holder: str = ""  # "host pid N" of the scheduler that wrote it


class ScheduleStatus(msgspec.Struct, kw_only=True):
    """What the active scheduler of a schedule last said of it (``aqueue schedules``)."""

    schedule: str
    holder: str  # "host pid N" of the active scheduler
    active_since: str  # when it took the lease, ISO 8601 UTC
    last_tick: str | None  # the last tick fired (or skipped), ISO 8601 UTC
    updated: str  # when it wrote this, ISO 8601 UTC


decode_lease = msgspec.json.Decoder(Lease).decode
decode_status = msgspec.json.Decoder(ScheduleStatus).decode
encode_json = msgspec.json.Encoder().encode


def lease_queue_name(schedule_name: str) -> str:
    """The queue that holds the lease of schedule ``schedule_name``."""
    return f"aqueue.schedule.{schedule_name}"


def status_queue_name(schedule_name: str) -> str:
    """The queue that keeps the latest status of schedule ``schedule_name``."""
    return f"{lease_queue_name(schedule_name)}.status"


async def read_status(broker: Broker, schedule_name: str) -> ScheduleStatus | None:
    """The latest status the active scheduler of ``schedule_name`` wrote, if any."""
    body = await broker.peek_latest(status_queue_name(schedule_name))
    if body is None:
        return None
    try:
        return decode_status(body)
    except msgspec.DecodeError:
        return None


def iso_utc(timestamp: float) -> str:
    return tick_id(datetime.datetime.fromtimestamp(timestamp, _UTC))


def holder_name() -> str:
    return f"{socket.gethostname()} pid {os.getpid()}"


def parse_tick(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass(frozen=True)
class ScheduleRow:
    """One schedule as ``aqueue schedules`` and the dashboard show it.

    ``state`` is ``active`` (a process holds the lease and fires the ticks), ``no
    scheduler`` (the lease waits in its queue) or ``never run``. ``active_scheduler``
    (``"HOST pid PID"``), ``active_since`` and ``status_updated`` are what the active
    scheduler last wrote; when none runs, they name the last one that did.
    """

    name: str
    expression: str
    actor: str
    queue: str
    next_tick: str
    last_tick: str | None
    schedulers: int
    state: str
    active_scheduler: str | None
    active_since: str | None
    status_updated: str | None

    def asdict(self) -> dict[str, Any]:
        return asdict(self)


async def schedule_rows(broker: Broker) -> list[ScheduleRow]:
    """Every schedule of ``broker``, by name."""
    now = datetime.datetime.fromtimestamp(broker._now(), datetime.timezone.utc)
    rows = []
    for name, schedule in sorted(broker.schedules.items()):
        info = await broker.queue_info(lease_queue_name(name))
        schedulers = 0 if info is None else info.consumers
        if info is None:
            state = "never run"
        elif info.ready == 0 and schedulers:
            state = "active"
        else:
            state = "no scheduler"
        status = await read_status(broker, name)
        rows.append(
            ScheduleRow(
                name=name,
                expression=schedule.describe(),
                actor=schedule.actor.actor_name,
                queue=schedule.actor.queue_name,
                next_tick=tick_id(schedule.next_tick(now)),
                last_tick=None if status is None else status.last_tick,
                schedulers=schedulers,
                state=state,
                active_scheduler=None if status is None else status.holder,
                active_since=None if status is None else status.active_since,
                status_updated=None if status is None else status.updated,
            )
        )
    return rows
