"""Names and arguments of the RabbitMQ objects aqueue declares.

Pure functions, shared by every broker, so the topology is described in one place.
For a queue ``q``:

* ``q``: durable; messages rejected there are dead-lettered through the default
  exchange to ``q.XQ``.
* ``q.XQ``: durable dead-letter queue, kept until an operator acts on it.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import ActorDefinitionError

__all__ = [
    "DEAD_LETTER_SUFFIX",
    "MAX_NAME_BYTES",
    "dead_letter_queue_name",
    "queue_arguments",
    "validate_actor_name",
    "validate_queue_name",
]

DEAD_LETTER_SUFFIX = ".XQ"
#: Queue names become part of routing keys (at most 255 bytes) with room left for
#: the delay-level prefix, so they are kept well below that.
MAX_NAME_BYTES = 180

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]*")
_RESERVED_PREFIXES = ("amq.", "aqueue.")


def validate_queue_name(name: object) -> str:
    """Return ``name`` if it is a valid aqueue queue name, else raise ActorDefinitionError."""
    _validate_name("queue name", name)
    assert isinstance(name, str)
    if name.startswith(_RESERVED_PREFIXES):
        raise ActorDefinitionError(
            f"queue name {name!r} is reserved: names starting with "
            f"{' or '.join(repr(p) for p in _RESERVED_PREFIXES)} belong to RabbitMQ and aqueue"
        )
    if name.endswith(DEAD_LETTER_SUFFIX):
        raise ActorDefinitionError(
            f"queue name {name!r} ends with {DEAD_LETTER_SUFFIX!r}, which names dead-letter queues"
        )
    return name


def validate_actor_name(name: object) -> str:
    """Return ``name`` if it is a valid actor name, else raise ActorDefinitionError."""
    _validate_name("actor name", name)
    assert isinstance(name, str)
    return name


def _validate_name(what: str, name: object) -> None:
    if not isinstance(name, str):
        raise ActorDefinitionError(f"{what} must be a str, not {type(name).__name__}")
    if not name:
        raise ActorDefinitionError(f"{what} must not be empty")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise ActorDefinitionError(f"{what} {name[:40]!r}... is longer than {MAX_NAME_BYTES} bytes")
    if not _NAME.fullmatch(name):
        raise ActorDefinitionError(
            f"{what} {name!r} is invalid: use letters, digits and '_', '.', ':', '-' "
            "(starting with a letter, digit or '_')"
        )


def dead_letter_queue_name(queue_name: str) -> str:
    """The dead-letter queue of ``queue_name``."""
    return queue_name + DEAD_LETTER_SUFFIX


def queue_arguments(queue_name: str) -> dict[str, Any]:
    """Declaration arguments of a work queue: broker-side dead-lettering to ``q.XQ``."""
    return {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_letter_queue_name(queue_name),
    }
