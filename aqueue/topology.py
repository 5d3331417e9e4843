"""Names and arguments of the RabbitMQ objects aqueue declares.

Pure functions, shared by every broker, so the topology is described in one place.
For a queue ``q``:

* ``q``: durable; messages rejected there are dead-lettered through the default
  exchange to ``q.XQ``.
* ``q.XQ``: durable dead-letter queue, kept until an operator acts on it.
* ``aqueue.delay.NN`` / ``aqueue.qdelay.NN`` (classic / quorum work queues): the delay
  levels, durable queues with a fixed message TTL that dead-letter to the level below.

With ``dramatiq_compat``, queues are declared exactly as Dramatiq 2.x declares them
(``dramatiq/brokers/rabbitmq.py``), so that either side may declare first: ``q`` and
``q.DQ`` (Dramatiq's delay queue) dead-letter to ``q.XQ`` (plus ``x-max-priority`` when
a max priority is set), and ``q.XQ`` has Dramatiq's ``x-message-ttl`` of 7 days (read,
like Dramatiq does, from the ``dramatiq_dead_message_ttl`` environment variable).

A classic work queue whose actors set ``max_priority`` also has ``x-max-priority`` (the
highest of them); its ``q.XQ`` and the delay levels have none: a delayed message keeps
its AMQP priority through the levels, which only hold it, in arrival order, for a TTL.

Every work, dead-letter and delay queue is durable and none is exclusive or auto-deleted;
the only arguments are dead-lettering, TTL, ``x-queue-type``, ``x-overflow``,
``x-delivery-limit`` and ``x-max-priority``. None of ``x-queue-mode``, ``x-queue-version``
or ``x-consumer-timeout``, so RabbitMQ 4.3 accepts all of them
(``brokers.rabbitmq.server.refused_by_rabbitmq_4_3``). The queues of limits and groups
(``aqueue.limit.*``, ``aqueue.group.*``) are durable classic queues with ``x-expires``,
and their locks and claims exclusive ones, which 4.3 accepts as well.
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal

from .errors import ActorDefinitionError

__all__ = [
    "DEAD_LETTER_SUFFIX",
    "DRAMATIQ_DELAY_SUFFIX",
    "MAX_NAME_BYTES",
    "QUEUE_TYPES",
    "QueueType",
    "dead_letter_queue_arguments",
    "dead_letter_queue_name",
    "dramatiq_dead_letter_arguments",
    "dramatiq_delay_queue_name",
    "dramatiq_queue_arguments",
    "queue_arguments",
    "validate_actor_name",
    "validate_queue_name",
]

DEAD_LETTER_SUFFIX = ".XQ"
#: Dramatiq's delay queue of ``q``, where its delayed messages and retries wait.
DRAMATIQ_DELAY_SUFFIX = ".DQ"
#: Dramatiq's ``DEAD_MESSAGE_TTL``: how long its dead letters are kept, in milliseconds.
DRAMATIQ_DEAD_MESSAGE_TTL_MS = 86400000 * 7
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


QueueType = Literal["classic", "quorum"]
QUEUE_TYPES: tuple[QueueType, ...] = ("classic", "quorum")

# Quorum queues dead-letter with publisher confirms inside RabbitMQ (at-least-once),
# which needs overflow=reject-publish; classic queues dead-letter at most once.
_AT_LEAST_ONCE = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}


def queue_arguments(
    queue_name: str,
    queue_type: QueueType = "classic",
    *,
    delivery_limit: int | None = None,
    max_priority: int | None = None,
) -> dict[str, Any]:
    """Declaration arguments of a work queue: broker-side dead-lettering to ``q.XQ``.

    A quorum queue also gets at-least-once dead-lettering and, if given, a delivery
    limit (RabbitMQ dead-letters a message delivered more often than that). A classic
    queue with a ``max_priority`` is a priority queue (``x-max-priority``); quorum queues
    take no such argument (RabbitMQ 4.0 and later prioritise their messages natively,
    3.x refuses it).
    """
    arguments: dict[str, Any] = {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_letter_queue_name(queue_name),
    }
    if queue_type == "quorum":
        arguments.update({"x-queue-type": "quorum", **_AT_LEAST_ONCE})
        if delivery_limit is not None:
            arguments["x-delivery-limit"] = delivery_limit
    elif max_priority is not None:
        arguments["x-max-priority"] = max_priority
    return arguments


def dead_letter_queue_arguments(queue_type: QueueType = "classic") -> dict[str, Any]:
    """Declaration arguments of a dead-letter queue (the same type as its work queue)."""
    return {"x-queue-type": "quorum"} if queue_type == "quorum" else {}


def dramatiq_delay_queue_name(queue_name: str) -> str:
    """Dramatiq's delay queue of ``queue_name`` (``q.DQ``)."""
    return queue_name + DRAMATIQ_DELAY_SUFFIX


def dramatiq_queue_arguments(queue_name: str, max_priority: int | None = None) -> dict[str, Any]:
    """Arguments Dramatiq declares ``queue_name`` and its ``.DQ`` with (``queue_name`` is
    the work queue in both cases: ``.DQ`` dead-letters to the work queue's ``.XQ`` too)."""
    arguments: dict[str, Any] = {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_letter_queue_name(queue_name),
    }
    if max_priority:
        arguments["x-max-priority"] = max_priority
    return arguments


def dramatiq_dead_letter_arguments() -> dict[str, Any]:
    """Arguments Dramatiq declares ``q.XQ`` with: its fixed message TTL."""
    ttl = os.getenv("dramatiq_dead_message_ttl")  # noqa: SIM112 (Dramatiq's own name)
    return {"x-message-ttl": int(ttl) if ttl else DRAMATIQ_DEAD_MESSAGE_TTL_MS}


# -- delays ---------------------------------------------------------------------------------
#
# A delay of d milliseconds is written as DELAY_LEVELS binary digits in the routing key,
# highest first, followed by the destination queue: "0.0.....1.0.1.q". Level L is a topic
# exchange and a queue with a fixed TTL of 2**L ms. Exchange L routes a message whose bit L
# is 1 to its queue (where it waits 2**L ms, then is dead-lettered to exchange L-1) and one
# whose bit is 0 straight on to exchange L-1. Level 0 hands over to the delivery exchange,
# where each work queue is bound by its name after exactly DELAY_LEVELS words. Every message
# in one level queue has the same TTL, so expiry order is arrival order: no head-of-line
# blocking.

DELAY_LEVELS = 36
DELAY_PREFIX = "aqueue.delay"
#: Quorum work queues get their own delay levels, quorum queues with at-least-once
#: dead-lettering (a queue's type cannot change, so the two trees have their own names).
QUORUM_DELAY_PREFIX = "aqueue.qdelay"
DELIVERY_EXCHANGE = "aqueue.delay.deliver"
MAX_DELAY_MS = 2**DELAY_LEVELS - 1
MAX_DELAY_SECONDS = MAX_DELAY_MS / 1000


def delay_level_name(level: int, queue_type: QueueType = "classic") -> str:
    """The exchange and queue of delay level ``level`` (TTL 2**level ms)."""
    prefix = QUORUM_DELAY_PREFIX if queue_type == "quorum" else DELAY_PREFIX
    return f"{prefix}.{level:02d}"


def delay_level_arguments(level: int, queue_type: QueueType = "classic") -> dict[str, Any]:
    """Declaration arguments of the level queue: fixed TTL, then on to the next level down."""
    lower = delay_level_name(level - 1, queue_type) if level > 0 else DELIVERY_EXCHANGE
    arguments: dict[str, Any] = {"x-message-ttl": 2**level, "x-dead-letter-exchange": lower}
    if queue_type == "quorum":
        arguments.update({"x-queue-type": "quorum", **_AT_LEAST_ONCE})
    return arguments


def delay_level_bindings(level: int) -> tuple[str, str]:
    """Binding keys on exchange ``level``: (to its own queue when its bit is 1,
    to the next exchange down when its bit is 0)."""
    prefix = "*." * (DELAY_LEVELS - 1 - level)
    return prefix + "1.#", prefix + "0.#"


def delivery_binding_key(queue_name: str) -> str:
    """Binding key of a work queue on the delivery exchange: exactly its own name."""
    return "*." * DELAY_LEVELS + queue_name


def delay_route(
    queue_name: str, delay_ms: int, queue_type: QueueType = "classic"
) -> tuple[str, str]:
    """Exchange and routing key that deliver to ``queue_name`` after ``delay_ms`` ms (> 0)."""
    if not 0 < delay_ms <= MAX_DELAY_MS:
        raise ValueError(f"delay must be between 1 and {MAX_DELAY_MS} ms, not {delay_ms}")
    bits = format(delay_ms, f"0{DELAY_LEVELS}b")
    exchange = delay_level_name(delay_ms.bit_length() - 1, queue_type)
    return exchange, ".".join(bits) + "." + queue_name
