"""The middleware interface: async hooks around enqueueing, processing and worker life."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from ..broker import Broker
    from ..context import MessageContext
    from ..message import Message
    from ..worker import Worker

__all__ = ["Middleware", "SkipMessage"]


class SkipMessage(Exception):
    """Raise from ``before_process_message`` to not run the actor.

    Args:
        reason: Why, recorded in the dead letter's ``x-aqueue-reason`` header.
        dead_letter: Move the message to the dead-letter queue (True) or just ack it.
    """

    def __init__(self, reason: str, *, dead_letter: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.dead_letter = dead_letter


class Middleware:
    """Base class of middleware; override the hooks you need, all are optional.

    The stack runs in order: first in the list first, for every hook. A hook that
    raises during processing leaves the message unacknowledged and requeued, so
    nothing is lost when, for example, a retry cannot be published.

    Attributes:
        actor_options: Names of the options this middleware accepts on actors and
            on ``send_with_options``.
    """

    actor_options: ClassVar[frozenset[str]] = frozenset()

    def normalize_option(self, name: str, value: Any) -> Any:
        """Validate an option given to an actor or a message; return the value to store.

        Raise ValueError with a clear message for a bad value. Values stored in
        messages must be JSON-compatible (durations become float seconds).
        """
        return value

    async def before_enqueue(self, broker: Broker, message: Message, delay: float | None) -> None:
        """Called before a message is published (``delay`` in seconds, or None)."""

    async def after_enqueue(self, broker: Broker, message: Message, delay: float | None) -> None:
        """Called after a message was published and confirmed."""

    async def before_process_message(self, context: MessageContext) -> None:
        """Called before the actor runs; raise :class:`SkipMessage` to not run it."""

    async def after_process_message(self, context: MessageContext) -> None:
        """Called after the actor returned (``context.result``) or raised (``.exception``)."""

    async def after_skip_message(self, context: MessageContext) -> None:
        """Called after a middleware skipped the message."""

    async def after_reject_message(
        self, broker: Broker, message: Message, error: Exception, reason: str
    ) -> None:
        """Called when a worker received a message it cannot run and dead-letters it
        without running any other hook: its actor is unknown to the worker, or its
        arguments or options are invalid there (``error``; ``reason`` is the dead letter's
        ``x-aqueue-reason``). ``message`` is as decoded: its options are not normalized."""

    async def before_worker_boot(self, broker: Broker, worker: Worker) -> None:
        """Called before a worker starts consuming."""

    async def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        """Called once a worker consumes its queues."""

    async def before_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        """Called when a worker begins to stop."""

    async def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        """Called once a worker stopped."""


def overrides(middleware: Middleware, hook: str) -> bool:
    """Whether ``middleware`` implements ``hook`` (so no-op hooks cost nothing per message)."""
    return getattr(type(middleware), hook) is not getattr(Middleware, hook)
