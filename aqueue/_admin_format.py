"""How the operator commands read and show things: durations, tables, dead letters.

Pure functions of data (no broker, no I/O): durations parsed and formatted, queue rows
and dead letters turned into terminal tables, text or JSON-ready dictionaries. The
operations themselves are in ``_admin``.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .dead_letters import DeadLetter
from .topology import dead_letter_queue_name

if TYPE_CHECKING:
    from ._admin import QueueRow

__all__ = [
    "dead_letters_table",
    "format_duration",
    "format_table",
    "letter_details",
    "letter_summary",
    "letter_text",
    "parse_duration",
    "queues_table",
    "unacked_note",
]

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


def queues_table(rows: Sequence[QueueRow]) -> str:
    """The queues, with an UNACKED column when the unacknowledged counts were asked for,
    and a DRAMATIQ .DQ column (Dramatiq's delayed messages) when those were."""
    unacked = any(row.unacked_asked for row in rows)
    dramatiq = any(row.dramatiq_asked for row in rows)
    header = (
        "QUEUE",
        "READY",
        *(("UNACKED",) if unacked else ()),
        "CONSUMERS",
        "DEAD LETTERS",
        *(("DRAMATIQ .DQ",) if dramatiq else ()),
    )
    return format_table(
        header,
        [
            (
                row.queue if row.ready is not None else f"{row.queue} (missing)",
                row.ready,
                *((row.unacknowledged,) if unacked else ()),
                row.consumers,
                row.dead_letters,
                *((row.dramatiq_delayed,) if dramatiq else ()),
            )
            for row in rows
        ],
    )


def unacked_note(rows: Sequence[QueueRow]) -> str | None:
    """One line saying why unacknowledged counts are missing, if some are."""
    reasons = [r for r in dict.fromkeys(row.unacknowledged_unavailable for row in rows) if r]
    if not reasons:
        return None
    return (
        "unacknowledged counts unavailable: "
        + "; ".join(reasons)
        + " (the management API needs the rabbitmq_management plugin; --management-url or "
        "AQUEUE_MANAGEMENT_URL say where it is)"
    )


# -- dead letters -----------------------------------------------------------------------------


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
