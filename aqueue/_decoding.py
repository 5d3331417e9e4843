"""Turning a delivery's body into a message, its actor and arguments, or a rejection."""

from __future__ import annotations

from typing import Any

import msgspec

from ._failures import INVALID_ARGUMENTS, TOO_LARGE, UNDECODABLE, UNKNOWN_ACTOR
from .actor import Actor
from .broker import Broker
from .errors import ActorNotFound, MessageDecodeError, ValidationError
from .message import Message

__all__ = [
    "REJECTIONS",
    "MessageTooLarge",
    "bind_message",
    "decode_message",
    "rejection_reason",
]

#: Counters middleware keeps in a message's options.
_COUNTER_OPTIONS = frozenset({"retries", "redeliveries", "first_failed_at"})


class MessageTooLarge(Exception):
    """A delivery's body is larger than the broker's max_message_size."""


#: What ``decode_message`` and ``bind_message`` raise for a message that cannot run.
REJECTIONS = (MessageDecodeError, ActorNotFound, ValidationError, MessageTooLarge)

#: The dead-letter reason of a delivery that cannot run, by exception (else invalid-arguments).
_REASONS = (
    (MessageTooLarge, TOO_LARGE),
    (MessageDecodeError, UNDECODABLE),
    (ActorNotFound, UNKNOWN_ACTOR),
)


def rejection_reason(exc: Exception) -> str:
    """The dead-letter reason of one of ``REJECTIONS``."""
    return next((r for t, r in _REASONS if isinstance(exc, t)), INVALID_ARGUMENTS)


def decode_message(broker: Broker, body: bytes) -> Message:
    """The message of a delivery's ``body``; ``MessageTooLarge`` or ``MessageDecodeError``."""
    if len(body) > broker.max_message_size:
        raise MessageTooLarge(
            f"the body is {len(body)} bytes, more than max_message_size "
            f"({broker.max_message_size} bytes)"
        )
    return Message.decode(body)


def bind_message(
    broker: Broker, queue_name: str, message: Message, message_options: frozenset[str]
) -> tuple[Message, Actor[..., Any], tuple[Any, ...], dict[str, Any]]:
    """The actor of ``message`` and its decoded arguments; ``ActorNotFound`` or
    ``ValidationError`` if it cannot run. ``message_options`` are the per-message options
    middleware reads: the broker translates them from the wire (in place), then they are
    validated like an actor's."""
    actor = broker.get_actor(message.actor_name)
    args, kwargs = actor.arguments.decode(message.args, message.kwargs)
    if message.options:
        broker._options_from_wire(message, message_options)
        _check_options(broker, message, message_options)
    if message.queue_name != queue_name:
        # Retries and redeliveries go back to the queue the message came from.
        message = msgspec.structs.replace(message, queue_name=queue_name)
    return message, actor, args, kwargs


def _check_options(broker: Broker, message: Message, message_options: frozenset[str]) -> None:
    """Validate the per-message options middleware will read; others are carried as is."""
    options = message.options
    for name, value in options.items():
        if name in _COUNTER_OPTIONS:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValidationError(f"option {name!r} must be an int >= 0, not {value!r}")
        elif name in message_options:
            normalized = broker.normalize_options(
                {name: value},
                owner=f"message for actor {message.actor_name!r}",
                for_message=True,
            )
            options[name] = normalized[name]
