"""The message format: what travels on the wire, JSON-encoded.

The field names are those Dramatiq uses, so that producers and workers of both
can later share queues.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec

from .errors import MessageDecodeError, ValidationError

__all__ = ["Message"]


class Message(msgspec.Struct, kw_only=True):
    """One enqueued call of an actor.

    Attributes:
        queue_name: The queue the message is published to.
        actor_name: The name of the actor that processes it.
        args: Positional arguments, as JSON values.
        kwargs: Keyword arguments, as JSON values.
        options: Per-message options (for example retry counters set by middleware).
        message_id: A unique id; retries of the same call keep it.
        message_timestamp: When the message was first created, in milliseconds since the epoch.
    """

    queue_name: str
    actor_name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = msgspec.field(default_factory=dict)
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    message_id: str = msgspec.field(default_factory=lambda: str(uuid.uuid4()))
    message_timestamp: int = msgspec.field(default_factory=lambda: int(time.time() * 1000))

    def encode(self) -> bytes:
        """The message as JSON bytes.

        Raises:
            ValidationError: an argument or option cannot be encoded as JSON.
        """
        try:
            return _encoder.encode(self)
        except (TypeError, ValueError) as exc:
            raise ValidationError(
                f"{self.actor_name}(): arguments cannot be encoded as JSON: {exc}"
            ) from None

    @classmethod
    def decode(cls, data: bytes) -> Message:
        """Parse JSON bytes into a message.

        Raises:
            MessageDecodeError: the bytes are not JSON, or not an aqueue message.
        """
        try:
            return _decoder.decode(data)
        except Exception as exc:
            # Not only DecodeError: a body nested deeply enough raises RecursionError, and
            # any failure here means the same thing (the body can never be run).
            raise MessageDecodeError(
                f"not a valid aqueue message: {type(exc).__name__}: {exc}"
            ) from None

    def asdict(self) -> dict[str, Any]:
        """The message as a plain dict of JSON-compatible values."""
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Message)
