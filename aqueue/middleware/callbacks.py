"""Send another actor a message after success or after final failure."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, ClassVar

from ..context import MessageContext
from ..errors import ActorNotFound, ValidationError
from ..message import Message
from ..topology import validate_actor_name
from .base import Middleware

__all__ = ["Callbacks"]

log = logging.getLogger(__name__)


class Callbacks(Middleware):
    """Enqueue ``on_success`` / ``on_failure`` actors, as Dramatiq does.

    The callback actor receives two arguments: the finished message as a dict, and
    the actor's result (on success) or ``{"type": ..., "message": ...}`` describing
    the exception (on failure, after the last retry). The callback is sent before
    the finished message is acked, so a crash may send it twice but never loses it.

    Actor options (per message too):
        on_success: Name of the actor to send after success.
        on_failure: Name of the actor to send after final failure.

    Args:
        foreign_queue: Where to send a callback naming an actor this broker does not
            have: a function of the actor's name that returns its queue, or None to not
            send it (an error is logged). A broker with ``dramatiq_compat`` sets it, so
            that callbacks reach actors that only Dramatiq workers have.
    """

    actor_options: ClassVar[frozenset[str]] = frozenset({"on_success", "on_failure"})

    def __init__(self, *, foreign_queue: Callable[[str], str | None] | None = None) -> None:
        self.foreign_queue = foreign_queue

    def normalize_option(self, name: str, value: Any) -> Any:
        if value is None:
            return None
        if hasattr(value, "actor_name"):  # an Actor
            value = value.actor_name
        return validate_actor_name(value)

    async def after_process_message(self, context: MessageContext) -> None:
        if context.exception is None:
            name = context.option("on_success")
            if name is not None:
                await self._send(context, name, context.result)
        elif not context.retry_scheduled:
            name = context.option("on_failure")
            if name is not None:
                exc = context.exception
                await self._send(context, name, {"type": type(exc).__name__, "message": str(exc)})

    async def _send(self, context: MessageContext, name: str, payload: Any) -> None:
        arguments = (context.message.asdict(), payload)
        try:
            try:
                callback = context.broker.get_actor(name)
            except ActorNotFound:
                queue_name = None if self.foreign_queue is None else self.foreign_queue(name)
                if queue_name is None:
                    raise
                # Another system's actor: published by name, its arguments unchecked.
                message = Message(queue_name=queue_name, actor_name=name, args=arguments)
                await context.broker.enqueue(message)
            else:
                await callback.send(*arguments)
        except (ActorNotFound, ValidationError) as exc:
            # A callback that cannot be built (unknown actor, result not JSON) is a bug to
            # report, not a reason to run the finished message again.
            log.error(
                "callback %s of message %s could not be sent: %s",
                name,
                context.message.message_id,
                exc,
            )
