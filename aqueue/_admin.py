"""What the operator commands of the command line do: queues, dead letters, send, check.

Kept apart from the click layer in ``cli.py``: every function here takes a broker (or
names) and returns data or raises :class:`AdminError` with a one-line reason.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from ._loading import LoadError
from .actor import Actor
from .broker import Broker
from .brokers.rabbitmq import RabbitmqBroker
from .dead_letters import DeadLetter
from .errors import ValidationError
from .message import Message
from .topology import DELIVERY_EXCHANGE, dead_letter_queue_name

__all__ = [
    "AdminError",
    "QueueRow",
    "check",
    "find_dead_letters",
    "format_table",
    "letter_details",
    "letter_summary",
    "list_dead_letters",
    "parse_duration",
    "queue_rows",
    "send",
]

EXIT_RUNTIME_ERROR = 1
EXIT_USAGE_ERROR = 2


class AdminError(Exception):
    """A command cannot do what was asked; the message is the one line shown."""

    def __init__(self, message: str, exit_code: int = EXIT_RUNTIME_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# -- durations --------------------------------------------------------------------------------

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", re.IGNORECASE)
_UNITS = {
    "": 1.0,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}


def parse_duration(text: str) -> float:
    """Seconds of ``7d``, ``12h``, ``30m``, ``45s``, ``1h30m`` or a plain number of seconds.

    Raises:
        ValueError: for anything else.
    """
    position = 0
    total = 0.0
    parts = 0
    while position < len(text):
        match = _DURATION.match(text, position)
        if match is None or match.end() == position:
            break
        unit = match.group(2).lower()
        if unit not in _UNITS:
            raise ValueError(f"invalid duration {text!r}: unknown unit {unit!r}")
        total += float(match.group(1)) * _UNITS[unit]
        position = match.end()
        parts += 1
    if parts == 0 or position != len(text):
        raise ValueError(
            f"invalid duration {text!r} (expected for example 7d, 12h, 30m, 45s or 90)"
        )
    return total


def format_duration(seconds: float) -> str:
    """``7d``, ``12h``, ``90s``: the largest whole unit."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


# -- output -----------------------------------------------------------------------------------


def format_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Columns padded to their widest cell, the header first."""
    lines = [[str(cell) for cell in header]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _cell(value: object) -> str:
    if value is None:
        return "-"
    return str(value)


def _one_line(text: str | None, width: int) -> str:
    if not text:
        return ""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 3] + "..."


# -- queues -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueRow:
    """Counts of a queue and its dead-letter queue; None where a queue does not exist."""

    queue: str
    ready: int | None
    consumers: int | None
    dead_letter_queue: str
    dead_letters: int | None

    def asdict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "exists": self.ready is not None,
            "ready": self.ready,
            "consumers": self.consumers,
            "dead_letter_queue": self.dead_letter_queue,
            "dead_letters": self.dead_letters,
        }


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


async def queue_rows(broker: Broker, names: Sequence[str]) -> list[QueueRow]:
    """Ready and consumer counts of each queue and its dead-letter queue (passive declares)."""
    rows = []
    for name in names:
        info = await broker.queue_info(name)
        dlq = dead_letter_queue_name(name)
        dead = await broker.queue_info(dlq)
        rows.append(
            QueueRow(
                queue=name,
                ready=None if info is None else info.ready,
                consumers=None if info is None else info.consumers,
                dead_letter_queue=dlq,
                dead_letters=None if dead is None else dead.ready,
            )
        )
    return rows


def queues_table(rows: Sequence[QueueRow]) -> str:
    return format_table(
        ("QUEUE", "READY", "CONSUMERS", "DEAD LETTERS"),
        [
            (
                row.queue if row.ready is not None else f"{row.queue} (missing)",
                row.ready,
                row.consumers,
                row.dead_letters,
            )
            for row in rows
        ],
    )


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


def _actor_of(letter: DeadLetter) -> str | None:
    if letter.actor_name is not None:
        return letter.actor_name
    message = letter.message
    return None if message is None else message.actor_name


def _failed_at(letter: DeadLetter) -> str | None:
    timestamp = letter.failed_at_timestamp
    if timestamp is None:
        return None
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def letter_summary(letter: DeadLetter) -> dict[str, Any]:
    """One dead letter in brief: id, actor, reason, when, the error on one line."""
    error = letter.error
    if letter.exception and error is not None:
        error = f"{letter.exception}: {error}"
    return {
        "message_id": letter.message_id,
        "actor": _actor_of(letter),
        "reason": letter.reason,
        "failed_at": letter.failed_at,
        "retries": letter.retries,
        "error": error,
    }


def dead_letters_table(letters: Sequence[DeadLetter]) -> str:
    return format_table(
        ("ID", "ACTOR", "REASON", "FAILED AT", "ERROR"),
        [
            (
                letter.message_id,
                _actor_of(letter),
                letter.reason,
                _failed_at(letter),
                _one_line(letter_summary(letter)["error"], 70),
            )
            for letter in letters
        ],
    )


def letter_details(letter: DeadLetter) -> dict[str, Any]:
    """Everything about a dead letter: the message, every header, the traceback."""
    message = letter.message
    headers = {
        key: value.decode(errors="replace") if isinstance(value, bytes) else value
        for key, value in letter.headers.items()
    }
    details: dict[str, Any] = {
        **letter_summary(letter),
        "exception": letter.exception,
        "error": letter.error,
        "headers": headers,
        "traceback": letter.traceback,
    }
    if message is not None:
        details["message"] = message.asdict()
        details["sent_at"] = datetime.datetime.fromtimestamp(
            message.message_timestamp / 1000, datetime.timezone.utc
        ).isoformat()
    else:
        details["message"] = None
        details["body"] = letter.body.decode(errors="replace")
    return details


def letter_text(letter: DeadLetter, queue: str) -> str:
    """A dead letter for reading in a terminal."""
    details = letter_details(letter)
    message = details["message"]
    lines = [
        f"message id:  {letter.message_id}",
        f"queue:       {queue} (dead letter in {dead_letter_queue_name(queue)})",
        f"actor:       {details['actor']}",
        f"reason:      {letter.reason}",
    ]
    if letter.exception or letter.error:
        lines.append(f"error:       {details['exception'] or ''}: {letter.error or ''}")
    lines.append(f"failed at:   {letter.failed_at}")
    lines.append(f"retries:     {letter.retries}")
    if message is not None:
        lines += [
            f"sent at:     {details['sent_at']}",
            f"args:        {json.dumps(message['args'])}",
            f"kwargs:      {json.dumps(message['kwargs'])}",
            f"options:     {json.dumps(message['options'])}",
        ]
    else:
        lines.append(f"body:        {_one_line(details['body'], 500)} (not an aqueue message)")
    lines.append("headers:")
    lines += [
        f"  {key}: {value}"
        for key, value in sorted(details["headers"].items())
        if key != "x-aqueue-traceback"
    ]
    if letter.traceback:
        lines.append("traceback:")
        lines += ["  " + line for line in letter.traceback.rstrip().splitlines()]
    return "\n".join(lines)


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


async def check(broker: Broker, queues: Sequence[str], *, timeout: float) -> None:
    """Raise AdminError unless the broker answers within ``timeout`` seconds and every
    queue (the broker's actors' and ``queues``), its dead-letter queue and the delivery
    exchange exist."""
    names = list(dict.fromkeys([*sorted(broker.queue_names), *queues]))
    try:
        with anyio.fail_after(timeout):
            await broker.connect()
            for name in names:
                for queue in (name, dead_letter_queue_name(name)):
                    if await broker.queue_info(queue) is None:
                        raise AdminError(f"queue {queue!r} does not exist")
            if names and isinstance(broker, RabbitmqBroker):
                await _check_exchange(broker, DELIVERY_EXCHANGE)
    except TimeoutError:
        raise AdminError(f"no answer from the broker within {timeout:g} s") from None


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
