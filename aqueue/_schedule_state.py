"""What the scheduler keeps in RabbitMQ: each schedule's lease and its latest status."""

from __future__ import annotations

import datetime
import os
import socket
from typing import TYPE_CHECKING

import msgspec

from .schedules import tick_id

if TYPE_CHECKING:
    from .broker import Broker

__all__ = [
    "Lease",
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
