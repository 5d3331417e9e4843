"""The message being processed, for middleware and for actors (``current_message()``)."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .message import Message

if TYPE_CHECKING:
    from .actor import Actor
    from .broker import Broker
    from .middleware.base import SkipMessage

__all__ = ["MessageContext", "current_message"]

_current: contextvars.ContextVar[Message] = contextvars.ContextVar("aqueue_current_message")


def current_message() -> Message:
    """The message whose actor is running (async and blocking actors alike).

    Raises:
        LookupError: called outside an actor run by a worker.
    """
    try:
        return _current.get()
    except LookupError:
        raise LookupError(
            "current_message() is only available inside an actor run by a worker"
        ) from None


@dataclass(eq=False)
class MessageContext:
    """What middleware sees of one message as a worker processes it.

    Attributes:
        broker: The broker the message came from.
        message: The decoded message.
        actor: The actor it names.
        redelivered: Whether RabbitMQ delivered it before, to another worker or to this
            one before a crash: False for a copy that came back to this worker because it
            lost its connection, or that it requeued or gave back itself.
        result: The actor's return value, once it succeeded.
        exception: The exception the actor raised, once it failed.
        retry_scheduled: Set by the retry middleware once a retry was published and
            confirmed; the worker then acks instead of dead-lettering.
        failure_headers: Extra headers for the dead letter, should the message end there.
        skip: The :class:`~aqueue.SkipMessage` a middleware raised, in ``after_skip_message``.
    """

    broker: Broker
    message: Message
    actor: Actor[Any, Any]
    redelivered: bool = False
    result: Any = None
    exception: BaseException | None = None
    retry_scheduled: bool = False
    failure_headers: dict[str, str] = field(default_factory=dict)
    skip: SkipMessage | None = None

    def option(self, name: str, default: Any = None) -> Any:
        """A per-message option, else the actor's option, else ``default``."""
        options = self.message.options
        if name in options:
            return options[name]
        return self.actor.options.get(name, default)
