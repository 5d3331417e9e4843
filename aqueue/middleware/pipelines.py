"""Run the next step of a pipeline once a step succeeded (``aqueue.pipeline``)."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import msgspec

from ..composition import PIPE_IGNORE, PIPE_TARGET, is_pipe_ignored
from ..context import MessageContext
from ..errors import ValidationError
from ..message import Message
from .base import Middleware

__all__ = ["Pipelines"]

log = logging.getLogger(__name__)


class Pipelines(Middleware):
    """Publish a pipeline's next step after a step succeeded, as Dramatiq does.

    The next step is the message in the step's ``pipe_target`` option (which carries the
    rest of the chain in its own); the step's return value is appended to its positional
    arguments unless it has ``pipe_ignore``. It is published, confirmed, before the step is
    acked, so a crash may run a step twice but never loses one. A step that failed for good
    ends the pipeline. A return value that cannot be encoded as JSON is a failure of the
    step (dead-lettered, not retried).

    Options (per message; ``pipe_ignore`` on actors too):
        pipe_target: The next step, a message as a dict (set by :func:`aqueue.pipeline`).
        pipe_ignore: This step does not receive the result of the step before.
    """

    actor_options: ClassVar[frozenset[str]] = frozenset({PIPE_TARGET, PIPE_IGNORE})

    def normalize_option(self, name: str, value: Any) -> Any:
        if value is None:
            return None
        if name == PIPE_IGNORE:
            if not isinstance(value, bool):
                raise ValueError(f"pipe_ignore must be True or False, not {value!r}")
            return value
        try:
            msgspec.convert(value, Message)
        except msgspec.ValidationError as exc:
            raise ValueError(f"pipe_target must be a message as a dict: {exc}") from None
        return value

    async def after_process_message(self, context: MessageContext) -> None:
        target = context.message.options.get(PIPE_TARGET)
        if context.exception is not None or target is None:
            return
        following = msgspec.convert(target, Message)
        if not is_pipe_ignored(following, context.broker.actors.get(following.actor_name)):
            following = msgspec.structs.replace(following, args=(*following.args, context.result))
        try:
            await context.broker.enqueue(following)
        except ValidationError as exc:
            # The result cannot be encoded (or is too large): the step fails, dead-lettered.
            context.exception = ValidationError(
                f"actor {context.actor.actor_name} returned a value that cannot be piped to "
                f"{following.actor_name}: {exc}"
            )
