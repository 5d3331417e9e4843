"""Dead letters: messages that failed for good, with the headers that say why."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import MessageDecodeError
from .message import Message

__all__ = ["DeadLetter"]


@dataclass(frozen=True)
class DeadLetter:
    """A message in a dead-letter queue (``<queue>.XQ``).

    Attributes:
        body: The message body as it was received.
        headers: The AMQP headers, including aqueue's ``x-aqueue-*`` reason headers.
        message_id: The AMQP message id (the aqueue message id for aqueue messages).
    """

    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    message_id: str | None = None

    @property
    def message(self) -> Message | None:
        """The decoded message, or None if the body is not a valid aqueue message."""
        try:
            return Message.decode(self.body)
        except MessageDecodeError:
            return None

    @property
    def reason(self) -> str | None:
        """Why it was dead-lettered: ``failed``, ``undecodable``, ``unknown-actor``, ..."""
        return self._header("x-aqueue-reason")

    @property
    def actor_name(self) -> str | None:
        """The actor that failed, when known."""
        return self._header("x-aqueue-actor")

    @property
    def exception(self) -> str | None:
        """The exception type, for failures."""
        return self._header("x-aqueue-exception")

    @property
    def error(self) -> str | None:
        """The exception message (bounded)."""
        return self._header("x-aqueue-error")

    @property
    def traceback(self) -> str | None:
        """The traceback (bounded)."""
        return self._header("x-aqueue-traceback")

    @property
    def failed_at(self) -> str | None:
        """When it failed for good, ISO 8601 in UTC."""
        return self._header("x-aqueue-failed-at")

    @property
    def retries(self) -> int:
        """How many retries it had."""
        value = self._header("x-aqueue-retries")
        return int(value) if value is not None else 0

    def _header(self, name: str) -> str | None:
        value = self.headers.get(name)
        if value is None:
            return None
        return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
