"""Queues that exist with other arguments: what RabbitMQ says differs, and what to do.

RabbitMQ refuses a declaration whose arguments differ from the queue's with
``PRECONDITION_FAILED - inequivalent arg 'A' for queue 'Q' in vhost 'V': received X but
current is Y``, naming one argument at a time. This module reads that line, so that a
clash is reported as one sentence (queue, argument, both values, the fix), and so that a
broker sharing queues with Dramatiq can adopt the few arguments that only Dramatiq sets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ...topology import DEAD_LETTER_SUFFIX

__all__ = ["Clash", "adopt", "dramatiq_adoptable", "describe_clash", "parse_clash"]

_CLASH = re.compile(
    r"inequivalent arg '(?P<argument>[^']+)' for queue '(?P<queue>[^']*)' in vhost '[^']*': "
    r"received (?P<received>none|the value '[^']*' of type '[^']+'|'[^']*') "
    r"but current is (?P<current>none|the value '[^']*' of type '[^']+'|'[^']*')"
)
_VALUE = re.compile(r"(?:the value )?'(?P<value>[^']*)'(?: of type '(?P<type>[^']+)')?")
_INTEGER_TYPES = frozenset({"byte", "short", "signedint", "long", "unsignedbyte", "unsignedshort"})

#: Arguments Dramatiq declares and aqueue does not, per queue kind: a compat broker
#: uses the queue as it exists when only these differ.
_DRAMATIQ_ARGUMENTS = frozenset({"x-max-priority"})
_DRAMATIQ_DEAD_LETTER_ARGUMENTS = frozenset({"x-message-ttl", "x-max-priority"})


@dataclass(frozen=True)
class Clash:
    """One argument RabbitMQ says differs: ``current`` is the queue's (None: unset)."""

    queue: str
    argument: str
    received: str | None
    current: str | None
    current_type: str | None


def parse_clash(error: BaseException) -> Clash | None:
    """The clash a ``PRECONDITION_FAILED`` error names, or None if it names none."""
    found = _CLASH.search(" ".join(str(a) for a in error.args) or str(error))
    if found is None:
        return None
    received, received_type = _value(found["received"])
    current, current_type = _value(found["current"])
    return Clash(
        found["queue"], found["argument"], received, current, current_type or received_type
    )


def _value(text: str) -> tuple[str | None, str | None]:
    if text == "none":
        return None, None
    matched = _VALUE.fullmatch(text)
    assert matched is not None
    return matched["value"], matched["type"]


def dramatiq_adoptable(queue_name: str, argument: str) -> bool:
    """Whether a compat broker may use ``queue_name`` as it is when ``argument`` differs."""
    if queue_name.endswith(DEAD_LETTER_SUFFIX):
        return argument in _DRAMATIQ_DEAD_LETTER_ARGUMENTS
    return argument in _DRAMATIQ_ARGUMENTS


def adopt(arguments: dict[str, Any], clash: Clash) -> None:
    """Change ``arguments`` to the queue's value of the clashing argument."""
    if clash.current is None:
        arguments.pop(clash.argument, None)
        return
    ours = arguments.get(clash.argument)
    integer = clash.current_type in _INTEGER_TYPES or isinstance(ours, int)
    arguments[clash.argument] = int(clash.current) if integer else clash.current


def describe_clash(clash: Clash, *, dramatiq_compat: bool) -> str:
    """One line: the queue, the argument, both values, and what to do."""
    current = "no value" if clash.current is None else repr(clash.current)
    received = "none" if clash.received is None else repr(clash.received)
    line = (
        f"queue {clash.queue!r} exists with other arguments: {clash.argument}={current} where "
        f"this broker declares {clash.argument}={received}, and RabbitMQ refuses the "
        "declaration (PRECONDITION_FAILED)"
    )
    if clash.argument == "x-max-priority" and not dramatiq_compat:
        return (
            f"{line}. A queue's x-max-priority is the highest max_priority of its actors and "
            "cannot change once the queue exists: give its actors the max_priority it was "
            "declared with (none: no max_priority), or delete the queue (after moving its "
            "messages) so that it is declared again; if Dramatiq declared it, use "
            "RabbitmqBroker(dramatiq_compat=True, dramatiq_max_priority=...)"
        )
    if not dramatiq_compat and dramatiq_adoptable(clash.queue, clash.argument):
        return (
            f"{line}. Dramatiq declares queues so: to share queues with Dramatiq, use "
            "RabbitmqBroker(dramatiq_compat=True); else delete the queue or use another name"
        )
    return (
        f"{line}. Delete the queue (after moving its messages) or give this broker the same "
        "settings (queue_type, queue_types, delivery_limit) as whoever declared it"
    )
