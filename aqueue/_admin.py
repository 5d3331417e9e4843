"""What the operator commands of the command line do: queues, dead letters, send, check.

Kept apart from the click layer in ``cli/``: every function here takes a broker (or
names) and returns data or raises :class:`AdminError` with a one-line reason. How the
results are shown (tables, text, JSON) and durations are read is in ``_admin_format``.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from ._admin_format import (
    dead_letters_table,
    format_duration,
    format_table,
    letter_details,
    letter_summary,
    letter_text,
    parse_duration,
    queues_table,
)
from ._loading import LoadError
from .actor import Actor
from .broker import Broker
from .brokers.rabbitmq import RabbitmqBroker
from .brokers.rabbitmq.clash_probe import probe_declarations
from .brokers.rabbitmq.clashes import describe_clash
from .brokers.rabbitmq.dramatiq_compat import dramatiq_compat_of
from .brokers.rabbitmq.management import ManagementApi, ManagementUnavailable
from .dead_letters import DeadLetter
from .errors import ValidationError
from .message import Message
from .topology import DELIVERY_EXCHANGE, dead_letter_queue_name, dramatiq_delay_queue_name

__all__ = [
    "AdminError",
    "QueueRow",
    "check",
    "dead_letters_table",
    "find_dead_letters",
    "format_duration",
    "format_table",
    "letter_details",
    "letter_summary",
    "letter_text",
    "list_dead_letters",
    "management_api",
    "parse_duration",
    "queue_rows",
    "queues_table",
    "send",
]

EXIT_RUNTIME_ERROR = 1
EXIT_USAGE_ERROR = 2


class AdminError(Exception):
    """A command cannot do what was asked; the message is the one line shown."""

    def __init__(self, message: str, exit_code: int = EXIT_RUNTIME_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# -- queues -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueRow:
    """Counts of a queue and its dead-letter queue; None where a queue does not exist.

    ``unacknowledged`` is asked of the management API only when ``unacked_asked``; it is
    None with the reason in ``unacknowledged_unavailable`` when the API cannot tell.
    ``dramatiq_delayed`` counts Dramatiq's delayed messages in ``<queue>.DQ``, only when
    ``dramatiq_asked``.
    """

    queue: str
    ready: int | None
    consumers: int | None
    dead_letter_queue: str
    dead_letters: int | None
    unacked_asked: bool = False
    unacknowledged: int | None = None
    unacknowledged_unavailable: str | None = None
    dramatiq_asked: bool = False
    dramatiq_delayed: int | None = None

    def asdict(self) -> dict[str, Any]:
        row: dict[str, Any] = {"queue": self.queue, "exists": self.ready is not None}
        row["ready"] = self.ready
        if self.unacked_asked:
            row["unacknowledged"] = self.unacknowledged
        row["consumers"] = self.consumers
        row["dead_letter_queue"] = self.dead_letter_queue
        row["dead_letters"] = self.dead_letters
        if self.unacked_asked:
            row["unacknowledged_unavailable"] = self.unacknowledged_unavailable
        if self.dramatiq_asked:
            row["dramatiq_delay_queue"] = dramatiq_delay_queue_name(self.queue)
            row["dramatiq_delayed"] = self.dramatiq_delayed
        return row


def queue_names_of(broker: Broker, names: Sequence[str]) -> list[str]:
    """The queues named, else those of the broker's actors."""
    if names:
        return list(dict.fromkeys(names))
    if not broker.actors:
        raise AdminError(
            "name the queues, or give --broker MODULE[:ATTRIBUTE] of a module that declares "
            "actors (RabbitMQ cannot list queues without its management plugin)",
            EXIT_USAGE_ERROR,
        )
    return sorted(broker.queue_names)


def management_api(broker: Broker, url: str | None = None) -> ManagementApi | str:
    """The management API of ``broker``'s cluster (at ``url`` if given), or why there is none."""
    if not isinstance(broker, RabbitmqBroker):
        return f"not a RabbitMQ broker ({type(broker).__name__})"
    try:
        return ManagementApi.for_broker(broker.urls, url)
    except ValueError as exc:
        raise AdminError(str(exc), EXIT_USAGE_ERROR) from None


async def queue_rows(
    broker: Broker,
    names: Sequence[str],
    *,
    management: ManagementApi | str | None = None,
    dramatiq: bool | None = None,
) -> list[QueueRow]:
    """Ready and consumer counts of each queue and its dead-letter queue (passive declares)
    and, given a ``management`` API (or the reason there is none), unacknowledged counts;
    with ``dramatiq`` (default: whether the broker has ``dramatiq_compat``), the ready
    messages of ``<queue>.DQ``."""
    if dramatiq is None:
        dramatiq = dramatiq_compat_of(broker)
    rows = []
    for name in names:
        info = await broker.queue_info(name)
        dlq = dead_letter_queue_name(name)
        dead = await broker.queue_info(dlq)
        delayed = await broker.queue_info(dramatiq_delay_queue_name(name)) if dramatiq else None
        unacked: int | None = None
        unavailable: str | None = None
        if info is not None and isinstance(management, ManagementApi):
            unacked, unavailable = await _unacknowledged(management, name)
        elif info is not None and isinstance(management, str):
            unavailable = management
        rows.append(
            QueueRow(
                queue=name,
                ready=None if info is None else info.ready,
                consumers=None if info is None else info.consumers,
                dead_letter_queue=dlq,
                dead_letters=None if dead is None else dead.ready,
                unacked_asked=management is not None,
                unacknowledged=unacked,
                unacknowledged_unavailable=unavailable,
                dramatiq_asked=dramatiq,
                dramatiq_delayed=None if delayed is None else delayed.ready,
            )
        )
    return rows


async def _unacknowledged(management: ManagementApi, name: str) -> tuple[int | None, str | None]:
    try:
        counts = await management.queue_counts(name)
    except ManagementUnavailable as exc:
        return None, f"management API unavailable ({exc})"
    if counts is None:
        return None, f"the management API does not know the queue (vhost {management.vhost!r})"
    if counts.unacknowledged is None:
        return None, "the management API has no statistics for the queue yet"
    return counts.unacknowledged, None


# -- dead letters -----------------------------------------------------------------------------


async def dead_letter_count(broker: Broker, queue: str) -> int:
    """Dead letters waiting in ``<queue>.XQ``; AdminError if it does not exist."""
    info = await broker.queue_info(dead_letter_queue_name(queue))
    if info is None:
        raise AdminError(
            f"queue {queue!r} has no dead-letter queue {dead_letter_queue_name(queue)!r} "
            "(check the name; it is declared with the queue)"
        )
    return info.ready


async def list_dead_letters(broker: Broker, queue: str, *, limit: int) -> tuple[list[Any], int]:
    """Up to ``limit`` dead letters of ``queue`` (left in place) and how many there are."""
    total = await dead_letter_count(broker, queue)
    letters = await broker.dead_letters(queue, limit=limit) if total else []
    return letters, total


async def find_dead_letters(broker: Broker, queue: str, message_id: str) -> list[DeadLetter]:
    """The dead letters of ``queue`` with ``message_id`` (reads the whole dead-letter queue)."""
    total = await dead_letter_count(broker, queue)
    letters = await broker.dead_letters(queue, limit=total) if total else []
    found = [letter for letter in letters if letter.message_id == message_id]
    if not found:
        raise AdminError(
            f"no dead letter with id {message_id!r} in {dead_letter_queue_name(queue)} "
            f"({total} dead letters there; list them with: aqueue dlq ls {queue})"
        )
    return found


# -- send -------------------------------------------------------------------------------------


def load_actor(spec: str) -> Actor[Any, Any]:
    """The actor named by ``MODULE:ACTOR``."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise LoadError(f"{spec!r}: expected MODULE:ACTOR")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LoadError(f"cannot import {module_name!r}: {exc}") from exc
    except Exception as exc:  # the module itself is broken, e.g. a bad @actor option
        raise LoadError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    try:
        obj = getattr(module, attribute)
    except AttributeError:
        raise LoadError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(obj, Actor):
        raise LoadError(f"{spec} is a {type(obj).__name__}, not an aqueue actor")
    return obj


def parse_json(option: str, text: str | None, kind: type) -> Any:
    """The JSON value of an option, which must be a ``kind`` (list or dict)."""
    if text is None:
        return kind()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AdminError(f"{option}: invalid JSON: {exc}", EXIT_USAGE_ERROR) from None
    if not isinstance(value, kind):
        expected = "a JSON array" if kind is list else "a JSON object"
        raise AdminError(f"{option} must be {expected}, not {text!r}", EXIT_USAGE_ERROR)
    return value


async def send(
    actor: Actor[Any, Any],
    *,
    args: list[Any],
    kwargs: dict[str, Any],
    options: dict[str, Any],
    delay: float | None,
) -> Message:
    """Send a message to ``actor`` with ``send_with_options``, then close its broker."""
    try:
        return await actor.send_with_options(args=args, kwargs=kwargs, delay=delay, **options)
    except ValidationError as exc:
        raise AdminError(str(exc), EXIT_USAGE_ERROR) from None
    finally:
        await actor.broker.close()


# -- check ------------------------------------------------------------------------------------


async def check(
    broker: Broker, queues: Sequence[str], *, timeout: float, consumers: bool = True
) -> list[str]:
    """Raise AdminError unless the broker answers within ``timeout`` seconds, every
    queue (the broker's actors' and ``queues``), its dead-letter queue and the delivery
    exchange exist and, with ``consumers``, every queue has a consumer (a worker).

    On RabbitMQ, also unless each queue's declaration as the broker makes it would be
    refused (found without declaring anything: ``clash_probe.py``) and, with
    ``dramatiq_compat``, unless ``<queue>.DQ`` is missing or (with ``consumers``) not
    consumed. Returns notes to show: ``.DQ`` backlogs, queues used as they are."""
    names = list(dict.fromkeys([*sorted(broker.queue_names), *queues]))
    notes: list[str] = []
    try:
        with anyio.fail_after(timeout):
            await broker.connect()
            idle = []
            for name in names:
                info = await broker.queue_info(name)
                if info is None:
                    raise AdminError(f"queue {name!r} does not exist")
                if await broker.queue_info(dead_letter_queue_name(name)) is None:
                    raise AdminError(f"queue {dead_letter_queue_name(name)!r} does not exist")
                if info.consumers == 0:
                    idle.append(name)
                if isinstance(broker, RabbitmqBroker):
                    notes += await _check_declarations(broker, name)
                if dramatiq_compat_of(broker):
                    idle += await _check_dramatiq_delays(broker, name, notes)
            if names and isinstance(broker, RabbitmqBroker):
                await _check_exchange(broker, DELIVERY_EXCHANGE)
    except TimeoutError:
        raise AdminError(f"no answer from the broker within {timeout:g} s") from None
    if consumers and idle:
        listed = ", ".join(repr(name) for name in idle)
        raise AdminError(
            f"no worker consumes queue{'s' if len(idle) > 1 else ''} {listed} "
            "(0 consumers; --no-consumers checks the topology only)"
        )
    return notes


async def _check_declarations(broker: RabbitmqBroker, name: str) -> list[str]:
    """AdminError if RabbitMQ would refuse a declaration of ``name`` (or of its
    companions); notes for the differences a compat broker accepts."""
    compat = dramatiq_compat_of(broker)
    notes = []
    for probe in await probe_declarations(broker, name):
        if probe.clash is not None:
            raise AdminError(describe_clash(probe.clash, dramatiq_compat=compat))
        notes += [
            f"queue {clash.queue!r} has {clash.argument}={clash.current or 'none'} "
            f"where this broker declares {clash.received or 'none'}: used as it is "
            "(dramatiq_compat)"
            for clash in probe.adopted
        ]
    return notes


async def _check_dramatiq_delays(broker: Broker, name: str, notes: list[str]) -> list[str]:
    """AdminError if ``<name>.DQ`` is missing; its name if nothing consumes it; a note of
    its backlog."""
    delay_queue = dramatiq_delay_queue_name(name)
    info = await broker.queue_info(delay_queue)
    if info is None:
        raise AdminError(f"queue {delay_queue!r} does not exist")
    if info.ready:
        notes.append(
            f"queue {delay_queue!r}: {info.ready} Dramatiq delayed message"
            f"{'s' if info.ready != 1 else ''} to move (a compat worker moves them)"
        )
    return [delay_queue] if info.consumers == 0 else []


async def _check_exchange(broker: RabbitmqBroker, name: str) -> None:
    import aio_pika.exceptions

    connection = broker.connection
    assert connection is not None
    channel = await connection.channel()
    try:
        await channel.declare_exchange(name, passive=True)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        raise AdminError(f"exchange {name!r} does not exist") from None
    finally:
        if not channel.is_closed:
            await channel.close()
