"""What a broker offers ``Actor.call``: a reply address, waiting for a reply, publishing one.

A call is a message with the option ``reply_to`` (the caller's reply address); the worker's
:class:`~aqueue.middleware.Replies` publishes the final outcome there as a :class:`Reply`,
correlated by the message id. RabbitMQ brokers use Direct Reply-To, the in-memory one
futures in its process.
"""

from __future__ import annotations

import abc
import asyncio
import traceback
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from .errors import ActorError, MessageDecodeError
from .message import Message

if TYPE_CHECKING:
    from .broker import Broker

__all__ = [
    "DEFAULT_CALL_TIMEOUT",
    "REPLY_TO",
    "RemoteError",
    "Reply",
    "ReplySupport",
    "error_reply",
    "read_reply",
    "result_reply",
]

#: How long ``Actor.call`` waits for the reply by default, in seconds.
DEFAULT_CALL_TIMEOUT = 30.0

#: The message option that holds the caller's reply address.
REPLY_TO = "reply_to"


class RemoteError(msgspec.Struct, kw_only=True):
    """How an actor failed: its exception's type name, text and traceback."""

    type: str
    message: str
    traceback: str = ""


class Reply(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The body of a reply: the actor's return value as JSON, or its failure."""

    result: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"null"))
    error: RemoteError | None = None


_encoder = msgspec.json.Encoder()
_reply_decoder = msgspec.json.Decoder(Reply)


def result_reply(result: Any) -> bytes:
    """The reply to a success; raises TypeError or ValueError if ``result`` is not JSON."""
    try:
        raw = msgspec.Raw(_encoder.encode(result))
    except msgspec.EncodeError as exc:  # a ValueError already; say so for readers
        raise ValueError(str(exc)) from None
    return _encoder.encode(Reply(result=raw))


def error_reply(exc: BaseException | None, *, type_name: str = "", text: str = "") -> bytes:
    """The reply to a failure: ``exc`` (with its traceback), or a type name and a text."""
    if exc is not None:
        type_name = type(exc).__name__
        text = str(exc)
        trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    else:
        trace = ""
    return _encoder.encode(Reply(error=RemoteError(type=type_name, message=text, traceback=trace)))


def read_reply(body: bytes, actor_name: str, decoder: msgspec.json.Decoder[Any]) -> Any:
    """The return value in a reply, decoded with ``decoder``; ActorError for a failure,
    MessageDecodeError for a body that is not a reply, msgspec.ValidationError for a
    value that does not fit ``decoder``'s type."""
    try:
        reply = _reply_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise MessageDecodeError(f"{actor_name}(): not a valid reply: {exc}") from None
    if reply.error is not None:
        error = reply.error
        raise ActorError(actor_name, error.type, error.message, error.traceback)
    return decoder.decode(reply.result)


class ReplySupport(abc.ABC):
    """The part of :class:`~aqueue.broker.Broker` that ``Actor.call`` and the
    :class:`~aqueue.middleware.Replies` middleware use."""

    async def request(self, message: Message, *, timeout: float) -> bytes:
        """Publish ``message`` with this process's reply address; return the reply body.

        Raises:
            TimeoutError: no reply within ``timeout`` seconds (a later one is discarded).
            BrokerConnectionError: the reply channel was lost while waiting (the work may
                still run); also what ``send()`` raises.
        """
        if timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        correlation_id = message.message_id
        broker: Broker = self  # type: ignore[assignment]
        try:
            with anyio.fail_after(timeout):
                address, reply = await self._expect_reply(correlation_id)
                try:
                    options = {**message.options, REPLY_TO: address}
                    await broker.enqueue(msgspec.structs.replace(message, options=options))
                    return await asyncio.shield(reply)
                finally:
                    self._forget_reply(correlation_id)
        except TimeoutError:
            raise TimeoutError(
                f"{message.actor_name}(): no reply to message {correlation_id} within "
                f"{timeout} s (the work may still run; a late reply is discarded)"
            ) from None

    @abc.abstractmethod
    async def _expect_reply(self, correlation_id: str) -> tuple[str, asyncio.Future[bytes]]:
        """This process's reply address, and a future that the reply to
        ``correlation_id`` completes."""

    @abc.abstractmethod
    def _forget_reply(self, correlation_id: str) -> None:
        """Stop waiting for the reply to ``correlation_id`` (a late one is discarded)."""

    @abc.abstractmethod
    async def publish_reply(self, address: str, correlation_id: str, body: bytes) -> None:
        """Publish a reply to ``address``, confirmed; a caller that is gone is not an error."""
