"""The broker interface shared by every broker, and the process-wide default broker."""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, overload

from ._actor_options import CORE_ACTOR_OPTIONS as CORE_ACTOR_OPTIONS
from ._actor_options import accepted_options, normalize_options
from ._default_broker import get_broker, set_broker
from ._deliveries import Consumer, Delivery, DeliveryHandler
from ._durations import Duration
from ._groups import GroupSupport
from ._in_flight import InFlightTracking
from ._limit_support import LimitSupport
from ._replies import ReplySupport
from ._scheduling_support import SchedulingSupport
from .actor import Actor
from .actor import actor as _declare_actor
from .dead_letters import DeadLetter
from .errors import ActorDefinitionError, ActorNotFound, ValidationError
from .message import Message
from .middleware import Middleware, default_middleware
from .schedules import Schedule, make_schedule
from .topology import MAX_DELAY_SECONDS

if TYPE_CHECKING:
    from typing import ParamSpec

    P = ParamSpec("P")
    R = TypeVar("R")

__all__ = [
    "Broker",
    "Consumer",
    "Delivery",
    "DeliveryHandler",
    "QueueInfo",
    "get_broker",
    "set_broker",
]

#: Largest encoded message accepted at send and at receive, in bytes (1 MiB).
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024

_B = TypeVar("_B", bound="Broker")


@dataclass(frozen=True)
class QueueInfo:
    """What the broker says of a queue.

    Attributes:
        name: The queue.
        ready: Messages waiting to be delivered.
        consumers: Consumers subscribed to it.
    """

    name: str
    ready: int
    consumers: int


class Broker(InFlightTracking, SchedulingSupport, ReplySupport, LimitSupport, GroupSupport):
    """What every broker offers: actors, sending, consuming, dead-lettering and joining.

    Attributes:
        actors: The registered actors by name.
        schedules: The registered schedules by name.
    """

    def __init__(
        self,
        *,
        middleware: Iterable[Middleware] | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        super().__init__()
        if max_message_size < 1:
            raise ValueError("max_message_size must be a positive number of bytes")
        self.max_message_size = max_message_size
        self.actors: dict[str, Actor[Any, Any]] = {}
        self.schedules: dict[str, Schedule] = {}
        self._clock_listeners = []
        self.middleware: list[Middleware] = (
            default_middleware() if middleware is None else list(middleware)
        )
        self._connection_listeners: list[Callable[[str], None]] = []

    def add_middleware(self, middleware: Middleware) -> None:
        """Append ``middleware`` to the stack (declare actors after adding their middleware)."""
        self.middleware.append(middleware)

    # -- actors ---------------------------------------------------------------------------

    @overload
    def actor(self, fn: Callable[P, R], /) -> Actor[P, R]: ...

    @overload
    def actor(self, /, **options: Any) -> Callable[[Callable[P, R]], Actor[P, R]]: ...

    def actor(
        self, fn: Callable[P, R] | None = None, /, **options: Any
    ) -> Actor[P, R] | Callable[[Callable[P, R]], Actor[P, R]]:
        """Declare an actor on this broker; same options as :func:`aqueue.actor`."""
        if fn is not None:
            return _declare_actor(fn, broker=self, **options)  # type: ignore[call-overload,no-any-return]
        return _declare_actor(broker=self, **options)

    @property
    def actor_options(self) -> frozenset[str]:
        """Names of the options actors of this broker may set (core and middleware)."""
        return accepted_options(self.middleware)

    def normalize_options(
        self, options: dict[str, Any], *, owner: str, for_message: bool = False
    ) -> dict[str, Any]:
        """Validate middleware options; return them normalized (durations as float seconds).

        Raises:
            ActorDefinitionError: for actor options (``for_message=False``).
            ValidationError: for per-message options.
        """
        return normalize_options(self.middleware, options, owner=owner, for_message=for_message)

    def register(self, actor: Actor[Any, Any]) -> None:
        """Add an actor; called by the actor itself. Names must be unique per broker."""
        existing = self.actors.get(actor.actor_name)
        if existing is not None and existing.fn is not actor.fn:
            raise ActorDefinitionError(
                f"an actor named {actor.actor_name!r} is already registered "
                f"({_qualname(existing.fn)}); give one of them another actor_name"
            )
        self.actors[actor.actor_name] = actor

    def get_actor(self, actor_name: str) -> Actor[Any, Any]:
        """The actor registered under ``actor_name``; raises ActorNotFound."""
        try:
            return self.actors[actor_name]
        except KeyError:
            raise ActorNotFound(f"no actor named {actor_name!r} is registered") from None

    def schedule(
        self,
        actor: Actor[..., Any],
        *,
        cron: str | None = None,
        every: Duration | None = None,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        name: str | None = None,
        timezone: str = "UTC",
        misfire_grace: Duration = 60.0,
    ) -> Schedule:
        """Call ``actor`` (one of this broker's) periodically; see :func:`aqueue.schedule`.

        Raises:
            ValueError: a bad schedule (see :func:`aqueue.schedule`), an actor of
                another broker, or a schedule of that name already registered here.
            ValidationError: ``args`` and ``kwargs`` do not fit the actor's signature.
        """
        schedule = make_schedule(
            actor,
            cron=cron,
            every=every,
            args=args,
            kwargs=kwargs,
            name=name,
            timezone=timezone,
            misfire_grace=misfire_grace,
        )
        if actor.broker is not self:
            raise ValueError(f"schedule {schedule.name!r}: {actor!r} belongs to another broker")
        if schedule.name in self.schedules:
            raise ValueError(
                f"a schedule named {schedule.name!r} is already registered "
                f"({self.schedules[schedule.name].describe()}); pass name=... to tell them apart"
            )
        self.schedules[schedule.name] = schedule
        return schedule

    @property
    def queue_names(self) -> set[str]:
        """The queues of the registered actors."""
        return {a.queue_name for a in self.actors.values()}

    # -- connection -----------------------------------------------------------------------

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the broker connection (done by itself on first use)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the broker connection."""

    @property
    def blocked(self) -> bool:
        """Whether the broker refuses publishes for now (RabbitMQ's resource alarms)."""
        return False

    def add_connection_listener(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Call ``listener(event)`` on ``"reconnected"``, ``"blocked"`` and ``"unblocked"``.

        Returns a function that removes the listener. Listeners run on the event loop and
        must not block.
        """
        self._connection_listeners.append(listener)

        def remove() -> None:
            if listener in self._connection_listeners:
                self._connection_listeners.remove(listener)

        return remove

    def _emit_connection_event(self, event: str) -> None:
        for listener in list(self._connection_listeners):
            listener(event)

    async def __aenter__(self: _B) -> _B:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- messages -------------------------------------------------------------------------

    async def enqueue(self, message: Message, *, delay: float | None = None) -> Message:
        """Publish ``message`` to its queue, after ``delay`` seconds if given.

        Runs the middleware's enqueue hooks and returns once the broker confirmed it.
        """
        _check_delay(delay)
        for m in self.middleware:
            await m.before_enqueue(self, message, delay)
        await self._publish_message(message, delay)
        self._delay_scheduled(message, delay)
        for m in self.middleware:
            await m.after_enqueue(self, message, delay)
        return message

    async def enqueue_many(
        self, messages: list[Message], *, delay: float | None = None
    ) -> list[Message]:
        """Publish ``messages`` with pipelined confirms; return once all were confirmed.

        If some fail, the first error is raised after every publish was answered.
        """
        _check_delay(delay)
        if len({message.message_id for message in messages}) < len(messages):
            # Confirms and returns are matched by message id within a batch.
            raise ValidationError("enqueue_many: two messages have the same message id")
        for message in messages:
            for m in self.middleware:
                await m.before_enqueue(self, message, delay)
        for error in await self._publish_messages(messages, delay):
            if error is not None:
                raise error
        for message in messages:
            self._delay_scheduled(message, delay)
            for m in self.middleware:
                await m.after_enqueue(self, message, delay)
        return messages

    async def _publish_messages(
        self, messages: Sequence[Message], delay: float | None
    ) -> Sequence[BaseException | None]:
        """Publish ``messages`` concurrently; each one's error, or None once confirmed.
        A broker that can pipeline publishes more cheaply overrides it."""
        for message in messages:
            self._encode(message)  # every size checked before anything is published
        return await asyncio.gather(
            *(self._publish_message(message, delay) for message in messages),
            return_exceptions=True,
        )

    def _encode(self, message: Message) -> bytes:
        """The message's JSON body; ValidationError if it is larger than allowed."""
        body = message.encode()
        if len(body) > self.max_message_size:
            raise ValidationError(
                f"{message.actor_name}(): the message is {len(body)} bytes, more than "
                f"max_message_size ({self.max_message_size} bytes); pass large data by "
                "reference (a URL, a key in a database or object store)"
            )
        return body

    def _options_from_wire(self, message: Message, known: frozenset[str]) -> None:
        """Put a received message's options in aqueue's terms, in place, before they are
        validated (``known``: the options middleware read). A no-op; a broker whose wire
        format differs overrides it (``dramatiq_compat``: Dramatiq's units and meanings)."""

    @abc.abstractmethod
    async def _publish_message(self, message: Message, delay: float | None) -> None:
        """Publish ``message`` (after ``delay`` seconds) and wait for the confirm."""

    @abc.abstractmethod
    async def dead_letters(self, queue_name: str, *, limit: int = 100) -> list[DeadLetter]:
        """Read up to ``limit`` dead letters of ``queue_name`` without removing them."""

    @abc.abstractmethod
    async def requeue_dead_letters(
        self,
        queue_name: str,
        *,
        message_ids: Iterable[str] | None = None,
        actor_name: str | None = None,
        limit: int | None = None,
    ) -> int:
        """Send dead letters of ``queue_name`` back to it with their retry count reset.

        Each one is republished and confirmed before it is removed from the
        dead-letter queue. Returns how many were requeued.

        Args:
            message_ids: Only these messages (default: all).
            actor_name: Only dead letters of this actor.
            limit: At most this many.
        """

    @abc.abstractmethod
    async def purge_dead_letters(
        self,
        queue_name: str,
        *,
        message_ids: Iterable[str] | None = None,
        older_than: float | None = None,
    ) -> int:
        """Delete dead letters of ``queue_name``; returns how many.

        Args:
            message_ids: Only these messages (default: all).
            older_than: Only those that failed at least this many seconds ago.
        """

    @abc.abstractmethod
    async def queue_info(self, queue_name: str) -> QueueInfo | None:
        """Ready messages and consumers of ``queue_name``; None if it does not exist."""

    @abc.abstractmethod
    async def declare_queue(self, queue_name: str) -> None:
        """Make sure ``queue_name`` and its dead-letter queue exist (idempotent)."""

    @abc.abstractmethod
    async def consume(
        self, queue_name: str, *, prefetch: int, handler: DeliveryHandler
    ) -> Consumer:
        """Subscribe ``handler`` to ``queue_name``, at most ``prefetch`` deliveries unsettled."""

    @abc.abstractmethod
    async def dead_letter(
        self, queue_name: str, delivery: Delivery, reason: dict[str, str]
    ) -> None:
        """Move a delivery to the dead-letter queue of ``queue_name`` with ``reason`` headers."""

    @abc.abstractmethod
    async def give_back(self, queue_name: str, delivery: Delivery) -> None:
        """Return a delivery a stopping worker did not finish, uncounted, to ``queue_name``.

        The same body, message id and headers are published to the queue again,
        confirmed, and then the delivery is acked: the copy is not marked redelivered,
        so the redelivery limit does not count a graceful stop. If that publish
        fails, the delivery is requeued instead. A settled delivery is left alone.
        """

    @abc.abstractmethod
    async def ready_count(self, queue_name: str) -> int:
        """How many messages wait in ``queue_name``, ready to be delivered."""


def _check_delay(delay: float | None) -> None:
    if delay is not None and delay > MAX_DELAY_SECONDS:
        raise ValidationError(
            f"delay of {delay:.0f} s is longer than the longest supported "
            f"({MAX_DELAY_SECONDS:.0f} s, about {MAX_DELAY_SECONDS / 86400 / 365:.1f} years)"
        )


def _qualname(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
