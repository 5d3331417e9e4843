"""Sharing queues with Dramatiq: declarations, units on the wire, and ``<q>.DQ``.

:func:`enable_dramatiq_compat` turns a :class:`~aqueue.RabbitmqBroker` into one that
shares live queues with Dramatiq 2.x producers and workers, in either order:

* **Declarations** are Dramatiq's (``Declarations.dramatiq_compat``): ``q`` and ``q.DQ``
  dead-letter to ``q.XQ``, ``q.XQ`` has Dramatiq's 7-day TTL; a queue Dramatiq declared
  with ``x-max-priority`` is used as it is.
* **Units.** Durations in a message's options are milliseconds on the wire, as Dramatiq
  writes and reads them (:data:`DURATION_OPTIONS`): aqueue converts its seconds to
  milliseconds when it publishes and back when a worker takes the message, so each side
  reads the other's options right, and aqueue's API stays in seconds. The rule is per
  broker, not per message: a Dramatiq message carries no mark that tells it apart, so
  every aqueue broker publishing to a shared queue must be a compat broker.
* **``.DQ``.** A worker also consumes ``<q>.DQ`` (``dramatiq_delays.py``).
* **Callbacks** (``on_success`` / ``on_failure``) naming an actor this process does not
  have are published to that actor's queue by name: the queue given for it in
  ``dramatiq_actors``, else Dramatiq's default queue, ``"default"``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, cast

from ...composition import convert_nested_options
from ...context import MessageContext
from ...message import Message
from ...middleware.base import Middleware
from ...middleware.callbacks import Callbacks
from ...topology import validate_actor_name, validate_queue_name
from .dramatiq_delays import DramatiqDelays

if TYPE_CHECKING:
    from ...broker import Broker
    from ...worker import Worker
    from .broker import RabbitmqBroker

__all__ = [
    "DRAMATIQ_DEFAULT_QUEUE",
    "DURATION_OPTIONS",
    "DramatiqCompat",
    "dramatiq_compat_of",
    "dramatiq_queue_of",
    "enable_dramatiq_compat",
]

log = logging.getLogger("aqueue.brokers.rabbitmq")

#: Message options that are durations: milliseconds in Dramatiq, seconds in aqueue's API.
DURATION_OPTIONS = ("min_backoff", "max_backoff", "time_limit", "max_age")

#: The queue of a Dramatiq actor declared without ``queue_name``.
DRAMATIQ_DEFAULT_QUEUE = "default"


def enable_dramatiq_compat(
    broker: RabbitmqBroker,
    *,
    max_priority: int | None = None,
    actors: Mapping[str, str] | None = None,
) -> None:
    """Make ``broker`` share its queues with Dramatiq (idempotent; before first use).

    Args:
        broker: The broker, before it declared or consumed anything.
        max_priority: Dramatiq's ``RabbitmqBroker(max_priority=...)``, if its brokers set
            one: declared as ``x-max-priority`` so that the declarations are equal.
        actors: The queues of actors that only Dramatiq has, by actor name, for callbacks
            that name them; an actor not listed is sent to ``"default"``, as Dramatiq does.

    Raises:
        ActorDefinitionError: a name in ``actors`` is not a valid actor or queue name.
    """
    queues = {validate_actor_name(a): validate_queue_name(q) for a, q in (actors or {}).items()}
    declarations = broker._declarations
    declarations.dramatiq_compat = True
    declarations.max_priority = max_priority
    if not any(isinstance(m, DramatiqCompat) for m in broker.middleware):
        # First: later middleware (AgeLimit, TimeLimit, Retries) must read seconds.
        broker.middleware.insert(0, DramatiqCompat())
    for middleware in broker.middleware:
        if isinstance(middleware, Callbacks):
            middleware.foreign_queue = functools.partial(dramatiq_queue_of, queues)


def dramatiq_compat_of(broker: object) -> bool:
    """Whether ``broker`` is a RabbitmqBroker with ``dramatiq_compat``."""
    return bool(getattr(getattr(broker, "_declarations", None), "dramatiq_compat", False))


def dramatiq_queue_of(queues: Mapping[str, str], actor_name: str) -> str:
    """The queue of an actor only Dramatiq has: its entry in ``queues``, else Dramatiq's
    default queue."""
    return queues.get(actor_name, DRAMATIQ_DEFAULT_QUEUE)


def to_wire(options: dict[str, Any]) -> None:
    """Durations in ``options`` from seconds to Dramatiq's milliseconds, in place (those of
    nested messages too: a pipeline's next step, a group's callbacks)."""
    for name in DURATION_OPTIONS:
        value = options.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            options[name] = round(value * 1000)
    convert_nested_options(options, to_wire)


def from_wire(options: dict[str, Any]) -> None:
    """Durations in ``options`` from milliseconds to seconds, in place (nested messages too)."""
    for name in DURATION_OPTIONS:
        value = options.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            options[name] = value / 1000
    convert_nested_options(options, from_wire)


class DramatiqCompat(Middleware):
    """The message side of Dramatiq compatibility: units, and ``.DQ`` consumers.

    Added first in the stack by :func:`enable_dramatiq_compat`.
    """

    actor_options: ClassVar[frozenset[str]] = frozenset()

    def __init__(self) -> None:
        self._delays: dict[int, DramatiqDelays] = {}

    async def before_enqueue(self, broker: Broker, message: Message, delay: float | None) -> None:
        to_wire(message.options)

    async def before_process_message(self, context: MessageContext) -> None:
        from_wire(context.message.options)

    async def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        # Duck-typed: this module must not import the broker module (it imports this one).
        if not dramatiq_compat_of(broker):
            return  # not a RabbitmqBroker with dramatiq_compat=True
        delays = DramatiqDelays(cast("RabbitmqBroker", broker))
        self._delays[id(worker)] = delays
        try:
            await delays.start([plan.name for plan in worker.plan()])
        except Exception:
            await delays.stop()
            del self._delays[id(worker)]
            raise

    async def before_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        delays = self._delays.pop(id(worker), None)
        if delays is not None:
            await delays.stop()
