"""Which processes consume what, from RabbitMQ's management API.

AMQP tells how many consumers a queue has, not whose they are. The management API lists
consumers with their channel's connection, and connections with the name the client gave:
aqueue names each ``aqueue <role> <hostname> pid <pid>``. Without the API (the plugin
is not enabled, say), the reason is returned and the page says what it cannot show.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import asdict, dataclass, field
from typing import Any

from .._admin import AdminError, management_api
from ..broker import Broker
from ..brokers.rabbitmq.management import ManagementUnavailable

__all__ = ["ConsumedQueue", "WorkerProcess", "Workers", "parse_connection_name", "workers"]

_NAME = re.compile(r"aqueue (?P<role>[a-z+]+) (?P<host>\S+) pid (?P<pid>\d+)")


def parse_connection_name(name: str) -> tuple[str, str, int] | None:
    """(role, hostname, pid) of an aqueue connection name, else None."""
    match = _NAME.fullmatch(name.strip())
    if match is None:
        return None
    return match["role"], match["host"], int(match["pid"])


@dataclass
class ConsumedQueue:
    queue: str
    prefetch: int | None
    active: bool | None


@dataclass
class WorkerProcess:
    """A process holding aqueue connections: its roles, since when, the queues it consumes."""

    host: str
    pid: int
    roles: list[str] = field(default_factory=list)
    connected_at: float | None = None  # seconds since the epoch, its oldest connection
    queues: list[ConsumedQueue] = field(default_factory=list)
    peer: str | None = None  # the client address RabbitMQ sees

    def asdict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Workers:
    processes: list[WorkerProcess]
    unavailable: str | None = None


async def workers(broker: Broker, management_url: str | None) -> Workers:
    """The aqueue processes connected to the broker's vhost, or why they cannot be listed."""
    try:
        api = management_api(broker, management_url)
    except AdminError as exc:
        return Workers([], str(exc))
    if isinstance(api, str):
        return Workers([], api)
    try:
        vhost = urllib.parse.quote(api.vhost, safe="")
        connections = await api.get_json(f"api/vhosts/{vhost}/connections")
        consumers = await api.get_json(f"api/consumers/{vhost}")
    except ManagementUnavailable as exc:
        return Workers([], f"management API unavailable ({exc})")
    return Workers(group(connections, consumers))


def group(connections: Any, consumers: Any) -> list[WorkerProcess]:
    """Processes from the management API's connection and consumer lists."""
    processes: dict[tuple[str, int], WorkerProcess] = {}
    by_connection: dict[str, WorkerProcess] = {}
    for connection in connections if isinstance(connections, list) else []:
        properties = connection.get("client_properties") or {}
        given = connection.get("user_provided_name") or properties.get("connection_name") or ""
        parsed = parse_connection_name(str(given))
        if parsed is None:
            continue
        role, host, pid = parsed
        process = processes.setdefault((host, pid), WorkerProcess(host, pid))
        process.roles = sorted({*process.roles, role})
        connected = connection.get("connected_at")
        if isinstance(connected, (int, float)):
            at = connected / 1000
            process.connected_at = (
                at if process.connected_at is None else min(at, process.connected_at)
            )
        process.peer = process.peer or connection.get("peer_host")
        by_connection[str(connection.get("name"))] = process
    for consumer in consumers if isinstance(consumers, list) else []:
        channel = consumer.get("channel_details") or {}
        owner = by_connection.get(str(channel.get("connection_name")))
        if owner is None:
            continue
        queue = (consumer.get("queue") or {}).get("name")
        if not isinstance(queue, str):
            continue
        prefetch = consumer.get("prefetch_count")
        active = consumer.get("active")
        owner.queues.append(
            ConsumedQueue(
                queue,
                prefetch if isinstance(prefetch, int) else None,
                active if isinstance(active, bool) else None,
            )
        )
    for process in processes.values():
        process.queues.sort(key=lambda q: q.queue)
    return sorted(processes.values(), key=lambda p: (p.host, p.pid))
