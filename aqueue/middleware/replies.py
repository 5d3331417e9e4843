"""Reply to ``Actor.call``: the final outcome of a message, sent to its caller."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar, TypeGuard

from .._replies import REPLY_TO, error_reply, result_reply
from ..context import MessageContext
from ..errors import ValidationError
from .base import Middleware

__all__ = ["Replies"]

if TYPE_CHECKING:
    from ..broker import Broker
    from ..message import Message

log = logging.getLogger(__name__)

#: The longest AMQP routing key, hence reply address.
_MAX_ADDRESS_LENGTH = 255


class Replies(Middleware):
    """Publish the outcome of a message sent by ``call()`` to the caller's reply address.

    The reply goes out once the outcome is final: after a success, or after a failure
    for which no retry was scheduled (so it comes after the ``Retries`` middleware in
    the stack), or after a middleware skipped the message to the dead-letter queue. It
    is published before the message is acked. A return value that cannot be encoded as
    JSON (or is larger than the broker's ``max_message_size``) makes the message fail,
    dead-lettered, and the caller gets that error. A reply that cannot be published is
    logged, never a reason to run the message again: replies are at most once.

    Message option (set by ``call()``, not meant to be set by hand):
        reply_to: The caller's reply address.
    """

    actor_options: ClassVar[frozenset[str]] = frozenset({REPLY_TO})

    def normalize_option(self, name: str, value: Any) -> Any:
        if value is None:
            return None
        if not _is_address(value):
            raise ValueError(f"reply_to must be a reply address (a short string), not {value!r}")
        return value

    async def after_process_message(self, context: MessageContext) -> None:
        address = context.message.options.get(REPLY_TO)
        if not address:
            return
        if context.exception is None:
            try:
                body = result_reply(context.result)
                _check_size(body, context)
            except (TypeError, ValueError) as exc:
                # The message fails: it is dead-lettered with this error as its reason.
                context.exception = ValidationError(
                    f"actor {context.actor.actor_name} returned a value that cannot be "
                    f"replied: {exc}"
                )
                body = error_reply(context.exception)
        elif context.retry_scheduled:
            return  # the caller waits for the retry
        else:
            body = error_reply(context.exception)
        await _reply(context.broker, context.message.message_id, address, body)

    async def after_skip_message(self, context: MessageContext) -> None:
        address = context.message.options.get(REPLY_TO)
        skip = context.skip
        if address and skip is not None and skip.dead_letter:
            body = error_reply(None, type_name=type(skip).__name__, text=skip.reason)
            await _reply(context.broker, context.message.message_id, address, body)

    async def after_reject_message(
        self, broker: Broker, message: Message, error: Exception, reason: str
    ) -> None:
        # The worker cannot run it (its actor unknown there, invalid arguments): answer
        # the caller now rather than let it wait for its timeout.
        address = message.options.get(REPLY_TO)
        if _is_address(address):
            await _reply(broker, message.message_id, address, error_reply(error))


def _is_address(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and 0 < len(value) <= _MAX_ADDRESS_LENGTH


def _check_size(body: bytes, context: MessageContext) -> None:
    limit = context.broker.max_message_size
    if len(body) > limit:
        raise ValueError(f"the reply is {len(body)} bytes, more than max_message_size ({limit})")


async def _reply(broker: Broker, message_id: str, address: str, body: bytes) -> None:
    try:
        await broker.publish_reply(address, message_id, body)
    except Exception as exc:
        # The caller times out; the message's outcome stands (replies are at most once).
        log.warning("reply to message %s could not be published: %r", message_id, exc)
