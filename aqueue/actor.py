"""Actors: functions that run on a worker when a message names them."""

from __future__ import annotations

import datetime
import inspect
import typing
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

import msgspec

from ._arguments import ArgumentSpec
from ._default_broker import get_broker
from ._durations import Duration, to_seconds
from ._replies import DEFAULT_CALL_TIMEOUT, REPLY_TO, read_reply
from .errors import ActorDefinitionError, ValidationError
from .message import Message
from .topology import validate_actor_name, validate_queue_name

if TYPE_CHECKING:
    from .broker import Broker

__all__ = ["Actor", "actor"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

DEFAULT_QUEUE_NAME = "default"


class Actor(Generic[P, R]):
    """A function registered with a broker, callable in-process or through a queue.

    Build actors with :func:`actor` or :meth:`Broker.actor`, not directly.

    Attributes:
        fn: The wrapped function.
        broker: The broker the actor is registered with.
        actor_name: The name messages use to address it.
        queue_name: The queue its messages go to.
        concurrency: How many of its messages one worker process runs at once
            (``None``: the worker's default).
        options: Middleware options set at decoration time.
        is_async: Whether ``fn`` is a coroutine function (runs on the event loop)
            rather than a plain function (runs in the worker's thread pool).
    """

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        broker: Broker,
        actor_name: str,
        queue_name: str,
        concurrency: int | None,
        options: dict[str, Any],
    ) -> None:
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise ActorDefinitionError(
                f"actor {actor_name!r}: generator functions cannot be actors"
            )
        if not callable(fn):
            raise ActorDefinitionError(f"actor {actor_name!r}: {fn!r} is not callable")
        if concurrency is not None and (
            not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1
        ):
            raise ActorDefinitionError(
                f"actor {actor_name!r}: concurrency must be a positive int, not {concurrency!r}"
            )
        if options.get(REPLY_TO) is not None:
            raise ActorDefinitionError(
                f"actor {actor_name!r}: {REPLY_TO} is set by call(), per message, not on actors"
            )
        self.fn = fn
        self.broker = broker
        self.actor_name = validate_actor_name(actor_name)
        self.queue_name = validate_queue_name(queue_name)
        self.concurrency = concurrency
        self.options = options
        self.is_async = inspect.iscoroutinefunction(fn)
        self.arguments = ArgumentSpec(fn, actor_name)
        self._result_decoder: msgspec.json.Decoder[Any] | None = None
        self.__doc__ = getattr(fn, "__doc__", None)
        self.__wrapped__ = fn
        broker.register(self)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the function directly, in this process (for tests and scripts)."""
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Actor({self.actor_name!r}, queue_name={self.queue_name!r})"

    def message(self, *args: P.args, **kwargs: P.kwargs) -> Message:
        """Build a message for this actor without sending it; arguments are validated.

        A message meant as a later step of :func:`aqueue.pipeline` may leave out its last
        positional argument, which the step before fills with its result (the pipeline
        checks each step exactly when it is built; ``send()`` wants every argument).
        """
        return self.message_with_options(args=args, kwargs=kwargs)

    def message_with_options(
        self,
        *,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Message:
        """Build a message with per-message options; arguments and options are validated
        (as for :meth:`message`, the last positional argument may be left to a pipeline)."""
        return self._message(args, kwargs, options, pipeable=True)

    def _message(
        self,
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any] | None,
        options: dict[str, Any],
        *,
        pipeable: bool = False,
    ) -> Message:
        kwargs = {} if kwargs is None else kwargs
        if not isinstance(args, (tuple, list)):
            raise ValidationError(f"{self.actor_name}(): args must be a tuple or list")
        if not isinstance(kwargs, dict):
            raise ValidationError(f"{self.actor_name}(): kwargs must be a dict")
        try:
            self.arguments.check(args, kwargs)
        except ValidationError:
            if not pipeable or not self._fits_piped(args, kwargs):
                raise
        if options:
            options = self.broker.normalize_options(
                options, owner=f"message for actor {self.actor_name!r}", for_message=True
            )
        return Message(
            queue_name=self.queue_name,
            actor_name=self.actor_name,
            args=tuple(args),
            kwargs=kwargs,
            options=options,
        )

    def _fits_piped(self, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> bool:
        try:
            self.arguments.check(args, kwargs, piped=True)
        except ValidationError:
            return False
        return True

    async def send(self, *args: P.args, **kwargs: P.kwargs) -> Message:
        """Enqueue a call of this actor; returns once the broker confirmed the message.

        Raises:
            ValidationError: the arguments do not fit the function's signature and type hints
                (nothing is published).
            BrokerConnectionError: the broker could not be reached in time.
            PublishError: the broker refused or could not route the message.
        """
        return await self.broker.enqueue(self._message(args, kwargs, {}))

    # The arguments are checked when the message is built, not by the type checker: it
    # allows no keyword (``timeout``) beside a ParamSpec's ``*args``.
    @overload
    async def call(
        self: Actor[..., Coroutine[Any, Any, T]],
        *args: Any,
        timeout: Duration = DEFAULT_CALL_TIMEOUT,
        **kwargs: Any,
    ) -> T: ...

    @overload
    async def call(
        self: Actor[..., T],
        *args: Any,
        timeout: Duration = DEFAULT_CALL_TIMEOUT,
        **kwargs: Any,
    ) -> T: ...

    async def call(
        self, *args: Any, timeout: Duration = DEFAULT_CALL_TIMEOUT, **kwargs: Any
    ) -> Any:
        """Run this actor on a worker and return what it returned.

        The message is sent like :meth:`send` (arguments validated first), with this
        process's reply address; the worker replies once the outcome is final (after the
        last retry), and the return value is decoded to the function's return annotation
        (``-> None``: None). Pass an argument named ``timeout`` of the function itself
        with ``call_with_options(kwargs={"timeout": ...})``.

        Args:
            timeout: Seconds (or a timedelta) to wait for the reply, publishing included
                (default 30).

        Raises:
            ActorError: the actor failed for good (its exception's type, text and traceback).
            TimeoutError: no reply within ``timeout`` (the work may still run; a late
                reply is discarded).
            ValidationError: the arguments do not fit, or the reply does not fit the
                return annotation.
            BrokerConnectionError, PublishError: as for :meth:`send`, or the reply
                channel was lost while waiting.
        """
        return await self.call_with_options(args=args, kwargs=kwargs, timeout=timeout)

    async def call_with_options(
        self,
        *,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        timeout: Duration = DEFAULT_CALL_TIMEOUT,
        **options: Any,
    ) -> Any:
        """Like :meth:`call`, with per-message options as for :meth:`send_with_options`."""
        if REPLY_TO in options:
            raise ValidationError(f"{self.actor_name}(): {REPLY_TO} is set by call() itself")
        if REPLY_TO not in self.broker.actor_options:
            raise ValidationError(
                f"{self.actor_name}(): call() needs the Replies middleware in the broker's "
                "stack (aqueue.middleware.Replies, part of the default one)"
            )
        timeout = _positive_seconds(timeout)
        message = self._message(args, kwargs, options)
        body = await self.broker.request(message, timeout=timeout)
        try:
            return read_reply(body, self.actor_name, self._decoder())
        except msgspec.ValidationError as exc:
            raise ValidationError(
                f"{self.actor_name}(): the reply does not fit the return annotation: {exc}"
            ) from None

    def _decoder(self) -> msgspec.json.Decoder[Any]:
        """A decoder for the function's return annotation (Any when it has none usable)."""
        if self._result_decoder is None:
            try:
                returns = typing.get_type_hints(self.fn).get("return", Any)
                self._result_decoder = msgspec.json.Decoder(returns)
            except Exception:  # no usable annotation (a forward reference, a callable object)
                self._result_decoder = msgspec.json.Decoder()
        return self._result_decoder

    async def send_with_options(
        self,
        *,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        delay: Duration | None = None,
        eta: datetime.datetime | None = None,
        **options: Any,
    ) -> Message:
        """Like :meth:`send`, with per-message options that override the actor's.

        Args:
            delay: Deliver after this many seconds (or this timedelta); RabbitMQ holds
                the message meanwhile, no worker needs to run.
            eta: Deliver at this time (a timezone-aware datetime; one in the past means now).
            **options: Middleware options for this message only (``max_retries``,
                ``time_limit``, ...).
        """
        message = self._message(args, kwargs, options)
        return await self.broker.enqueue(message, delay=_delay_of(delay, eta))

    async def send_many(
        self,
        calls: Iterable[Call],
        *,
        delay: Duration | None = None,
        eta: datetime.datetime | None = None,
        **options: Any,
    ) -> list[Message]:
        """Enqueue many calls at once; returns once RabbitMQ confirmed every one.

        ``await resize.send_many([(1, 2), (3, 4), {"width": 5, "height": 6}])``: each
        item holds the positional arguments (a tuple or list) or the keyword arguments
        (a dict) of one call. Every call is validated before anything is published; the
        publishes are pipelined. If one fails, its error is raised once all have been
        answered, and the others may have been queued (sending the batch again may
        duplicate them).

        Args:
            calls: The calls.
            delay: As for :meth:`send_with_options`, for every call.
            eta: As for :meth:`send_with_options`, for every call.
            **options: As for :meth:`send_with_options`, for every call.
        """
        messages = [
            self._message((), call, options)
            if isinstance(call, dict)
            else self._message(call, None, options)
            for call in calls
        ]
        return await self.broker.enqueue_many(messages, delay=_delay_of(delay, eta))


Call = tuple[Any, ...] | list[Any] | dict[str, Any]


def _positive_seconds(timeout: Duration) -> float:
    try:
        return to_seconds(timeout, name="timeout", allow_zero=False)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


def _delay_of(delay: Duration | None, eta: datetime.datetime | None) -> float | None:
    if delay is not None and eta is not None:
        raise ValidationError("give either delay or eta, not both")
    if eta is not None:
        if not isinstance(eta, datetime.datetime):
            raise ValidationError(f"eta must be a datetime, not {type(eta).__name__}")
        if eta.tzinfo is None or eta.utcoffset() is None:
            raise ValidationError(
                "eta must be timezone-aware (for example datetime.now(timezone.utc) + ...)"
            )
        return max(0.0, (eta - datetime.datetime.now(datetime.timezone.utc)).total_seconds())
    if delay is None:
        return None
    try:
        return to_seconds(delay, name="delay")
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


@overload
def actor(fn: Callable[P, R], /) -> Actor[P, R]: ...


@overload
def actor(
    *,
    actor_name: str | None = None,
    queue_name: str = DEFAULT_QUEUE_NAME,
    concurrency: int | None = None,
    broker: Broker | None = None,
    **options: Any,
) -> Callable[[Callable[P, R]], Actor[P, R]]: ...


def actor(
    fn: Callable[P, R] | None = None,
    /,
    *,
    actor_name: str | None = None,
    queue_name: str = DEFAULT_QUEUE_NAME,
    concurrency: int | None = None,
    broker: Broker | None = None,
    **options: Any,
) -> Actor[P, R] | Callable[[Callable[P, R]], Actor[P, R]]:
    """Declare an actor: ``@actor`` or ``@actor(queue_name=..., ...)``.

    Args:
        actor_name: The name messages address it by (default: the function's name).
        queue_name: The queue its messages go to (default ``"default"``).
        concurrency: How many of its messages one worker process runs at once
            (default: the worker's ``concurrency`` for ``async def`` actors, its
            ``threads`` for blocking ones).
        broker: The broker to register with (default: :func:`aqueue.get_broker`).
        **options: Options accepted by the broker's middleware; anything else is an
            :class:`~aqueue.ActorDefinitionError`.
    """

    def decorator(fn: Callable[P, R]) -> Actor[P, R]:
        target = broker if broker is not None else get_broker()
        name = actor_name if actor_name is not None else getattr(fn, "__name__", None)
        if name is None:
            raise ActorDefinitionError(f"{fn!r} has no __name__; pass actor_name=...")
        normalized = target.normalize_options(options, owner=f"actor {name!r}")
        return Actor(
            fn,
            broker=target,
            actor_name=name,
            queue_name=queue_name,
            concurrency=concurrency,
            options=normalized,
        )

    if fn is not None:
        return decorator(fn)
    return decorator
