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
  every aqueue broker publishing to a shared queue must be a compat broker. A received
  message's options are translated before they are validated (:meth:`DramatiqCompat.
  options_from_wire`, through the broker's ``_options_from_wire``): besides the units, the
  values Dramatiq reads as "unset" (None, and for some options 0 or False) are dropped, so
  the actor's value applies, and options aqueue cannot honour are logged, not rejected.
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

from ...composition import PIPE_TARGET, convert_nested_options
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

#: ``time_limit`` / ``max_age`` None ("no limit" in aqueue) on the wire: 100 years in ms.
#: Dramatiq reads None or 0 there as "the actor's value", and a long limit as no limit.
NO_LIMIT_MS = 100 * 365 * 86_400_000

#: Options Dramatiq reads as ``message.options.get(name) or <the actor's>``: a falsy value
#: (None, 0, False, "", []) is unset. (A set ``throws``, exception types, cannot be
#: encoded by Dramatiq: it is rejected, as it is actor-only in aqueue.)
_UNSET_IF_FALSY = ("time_limit", "max_age", "on_success", "on_failure", "pipe_ignore", "throws")

#: Options Dramatiq reads as ``message.options.get(name, <the actor's>)``, for which None
#: is no valid value (its Retries fails on it): unset. (``max_retries=None``, no limit,
#: means the same in both.)
_UNSET_IF_NONE = ("min_backoff", "max_backoff")

#: Options of Dramatiq that an aqueue worker cannot honour, and what a set value loses.
_NOT_HONOURED = {
    "on_retry_exhausted": "no actor is called when its retries run out",
    "notify_shutdown": "it is not interrupted when the worker stops",
    "store_results": "its result is not stored in Dramatiq's result backend",
    "group_completion_callbacks": "the callbacks of its Dramatiq group never run",
}

#: What Dramatiq keeps in a message for itself, or reads only along with an option above
#: (``result_ttl``): carried without a word. (A ``delay`` matters in a pipeline's next
#: step only, see ``_check_next_step``.)
_DRAMATIQ_BOOKKEEPING = frozenset(
    {"eta", "traceback", "requeue_timestamp", "redis_message_id", "group_completion_uuid"}
    | {"delay", "result_ttl"}
)


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
        broker.middleware.insert(0, DramatiqCompat())
    broker._dramatiq = next(m for m in broker.middleware if isinstance(m, DramatiqCompat))
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
    nested messages too: a pipeline's next step, a group's callbacks); a ``time_limit`` or
    ``max_age`` of None (no limit) as :data:`NO_LIMIT_MS`."""
    for name in DURATION_OPTIONS:
        if name not in options:
            continue
        value = options[name]
        if value is None and name in ("time_limit", "max_age"):
            options[name] = NO_LIMIT_MS
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            options[name] = round(value * 1000)
    convert_nested_options(options, to_wire)


def from_wire(options: dict[str, Any]) -> None:
    """``options`` as Dramatiq means them, in aqueue's terms, in place (nested messages too):
    the values Dramatiq reads as unset dropped, ``retry_when`` (never read from a message)
    dropped, durations from milliseconds to seconds, :data:`NO_LIMIT_MS` to None."""
    for name in _UNSET_IF_FALSY:
        if name in options and not options[name]:
            del options[name]
    for name in _UNSET_IF_NONE:
        if name in options and options[name] is None:
            del options[name]
    options.pop("retry_when", None)
    for name in DURATION_OPTIONS:
        value = options.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            no_limit = value >= NO_LIMIT_MS and name in ("time_limit", "max_age")
            options[name] = None if no_limit else value / 1000
    convert_nested_options(options, from_wire)


class DramatiqCompat(Middleware):
    """The message side of Dramatiq compatibility: units, and ``.DQ`` consumers.

    Added first in the stack by :func:`enable_dramatiq_compat`.
    """

    actor_options: ClassVar[frozenset[str]] = frozenset()

    def __init__(self) -> None:
        self._delays: dict[int, DramatiqDelays] = {}
        # (actor, option) pairs warned about: each once, bounded by the registered actors.
        self._warned: set[tuple[str, str]] = set()

    async def before_enqueue(self, broker: Broker, message: Message, delay: float | None) -> None:
        to_wire(message.options)

    def options_from_wire(self, message: Message, known: frozenset[str]) -> None:
        """Translate a received message's options in place (:func:`from_wire`), before they
        are validated, and log the Dramatiq options that aqueue does not act on.

        ``known`` are the options aqueue's middleware read. An unknown one is carried as it
        is: dead-lettering healthy work would be worse than ignoring an option aqueue cannot
        honour. One that changes what the message does is logged at warning once per actor,
        the others at debug.
        """
        options = message.options
        from_wire(options)
        actor_name = message.actor_name
        for name, value in options.items():
            if name in known or name in _DRAMATIQ_BOOKKEEPING:
                continue
            lost = _NOT_HONOURED.get(name)
            if lost is not None and value:
                self._warn_once(actor_name, name, value, lost)
            elif value is not None:
                log.debug(
                    "message %s of actor %s: option %s=%r ignored (aqueue does not know it)",
                    message.message_id,
                    actor_name,
                    name,
                    value,
                )
        self._check_next_step(actor_name, options)

    def _check_next_step(self, actor_name: str, options: dict[str, Any]) -> None:
        target = options.get(PIPE_TARGET)
        step_options = target.get("options") if isinstance(target, dict) else None
        delay = step_options.get("delay") if isinstance(step_options, dict) else None
        if delay:
            lost = "the next pipeline step is sent at once, not after that many milliseconds"
            self._warn_once(actor_name, "pipe_target delay", delay, lost)

    def _warn_once(self, actor_name: str, name: str, value: Any, lost: str) -> None:
        if (actor_name, name) in self._warned:
            return
        self._warned.add((actor_name, name))
        log.warning(
            "messages of actor %s set Dramatiq's option %s=%r, which aqueue does not honour: "
            "%s (warned once per actor)",
            actor_name,
            name,
            value,
            lost,
        )

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
