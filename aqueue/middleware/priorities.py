"""Message priorities: ``max_priority`` on actors, ``priority`` on messages."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import ValidationError
from .base import Middleware

if TYPE_CHECKING:
    from ..broker import Broker
    from ..message import Message

__all__ = [
    "DRAMATIQ_PRIORITY_OPTION",
    "MAX_PRIORITY",
    "Priorities",
    "max_priorities",
    "max_priority_of",
    "priority_of",
]

#: The largest priority RabbitMQ supports (the AMQP ``priority`` property is one byte).
MAX_PRIORITY = 255
#: Dramatiq's name of the per-message priority: published as the AMQP priority when a
#: message carries no ``priority`` of aqueue's (a Dramatiq message retried or delayed).
DRAMATIQ_PRIORITY_OPTION = "broker_priority"


class Priorities(Middleware):
    """Let urgent messages overtake those already waiting in their queue.

    A queue whose actors set ``max_priority`` is declared as a RabbitMQ priority queue
    (``x-max-priority``: the highest ``max_priority`` of the queue's actors). A message
    sent with ``priority=n`` is published with that AMQP priority, and RabbitMQ
    delivers the waiting messages of higher priority first (FIFO within a priority).
    Delays, retries, redeliveries, give-backs and replayed dead letters keep it.

    A message a worker has already prefetched is not overtaken: give priority queues a
    small prefetch (the actors' ``concurrency``, and ``--prefetch-exact``).

    Actor options:
        max_priority: The highest priority the actor's messages may have, an int from 1
            to 255 (RabbitMQ recommends at most 10). Actor only.
        priority: The message's priority, an int from 0 (the default) to the queue's
            ``max_priority``; per message, or on the actor as the default of its messages.
            Checked when sending (:class:`~aqueue.ValidationError`) against the actors of
            the queue this process knows; for a queue it knows no actor of, RabbitMQ caps it.
    """

    actor_options: ClassVar[frozenset[str]] = frozenset({"max_priority", "priority"})
    actor_only_options: ClassVar[frozenset[str]] = frozenset({"max_priority"})

    def normalize_option(self, name: str, value: Any) -> Any:
        lowest = 1 if name == "max_priority" else 0
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or not (lowest <= value <= MAX_PRIORITY)
        ):
            raise ValueError(
                f"{name} must be an int from {lowest} to {MAX_PRIORITY}, not {value!r}"
            )
        return value

    async def before_enqueue(self, broker: Broker, message: Message, delay: float | None) -> None:
        actor = broker.actors.get(message.actor_name)
        priority = message.options.get("priority")
        if priority is None and actor is not None:
            priority = actor.options.get("priority")
        if priority is None:
            return
        queue_name = message.queue_name
        if not any(a.queue_name == queue_name for a in broker.actors.values()):
            # No actor of that queue in this process (a pipeline's next step or a callback
            # run by another service): its maximum is unknown here, and RabbitMQ caps the
            # priority at it. Failing would dead-letter the work that just succeeded.
            return
        maximum = max_priority_of(broker, queue_name)
        if maximum is None:
            raise ValidationError(
                f"{message.actor_name}(): priority {priority} needs a priority queue, and no "
                f"actor of queue {message.queue_name!r} sets max_priority (give the actor "
                "max_priority=...)"
            )
        if priority > maximum:
            raise ValidationError(
                f"{message.actor_name}(): priority {priority} is above the max_priority of "
                f"queue {message.queue_name!r} ({maximum})"
            )


def max_priorities(broker: Broker, queue_name: str) -> dict[str, int]:
    """The ``max_priority`` of each actor of ``queue_name`` that sets one, by actor name."""
    return {
        name: actor.options["max_priority"]
        for name, actor in broker.actors.items()
        if actor.queue_name == queue_name and "max_priority" in actor.options
    }


def max_priority_of(broker: Broker, queue_name: str) -> int | None:
    """The ``x-max-priority`` of ``queue_name``: the highest of its actors', or None."""
    return max(max_priorities(broker, queue_name).values(), default=None)


def priority_of(broker: Broker, message: Message) -> int | None:
    """The AMQP priority to publish ``message`` with, or None for none.

    Its ``priority`` option, else its actor's default, else Dramatiq's ``broker_priority``.
    """
    options = message.options
    priority = options.get("priority")
    if priority is None:
        actor = broker.actors.get(message.actor_name)
        if actor is not None:
            priority = actor.options.get("priority")
    if priority is None:
        priority = options.get(DRAMATIQ_PRIORITY_OPTION)
    if not isinstance(priority, int) or isinstance(priority, bool):
        return None
    return min(max(priority, 0), MAX_PRIORITY)
