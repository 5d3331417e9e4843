"""Dead letters: messages that failed for good, with the headers that say why."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .errors import MessageDecodeError
from .message import Message

__all__ = ["DeadLetter", "body_message_id", "dead_letter_filter", "replay_message"]


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
        """Why it was dead-lettered: ``failed``, ``undecodable``, ``unknown-actor``, ...

        For a message RabbitMQ dead-lettered itself (a quorum queue's delivery limit, a
        rejection), the reason RabbitMQ gave, e.g. ``delivery_limit``.
        """
        reason = self._header("x-aqueue-reason")
        if reason is None:
            deaths = self.headers.get("x-death")
            if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
                value = deaths[0].get("reason")
                if isinstance(value, (bytes, str)):
                    reason = value.decode() if isinstance(value, bytes) else value
        return reason

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
    def failed_at_timestamp(self) -> float | None:
        """When it failed for good (else when it was sent), in seconds since the epoch."""
        text = self.failed_at
        if text is not None:
            try:
                return datetime.datetime.fromisoformat(text).timestamp()
            except ValueError:
                pass
        message = self.message
        return None if message is None else message.message_timestamp / 1000

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


class _MessageId(msgspec.Struct):
    message_id: str


_message_id_decoder = msgspec.json.Decoder(_MessageId)


def body_message_id(body: bytes) -> str | None:
    """The ``message_id`` field of a message body, or None if there is none.

    For messages published without the AMQP ``message_id`` property (Dramatiq sets none).
    """
    try:
        return _message_id_decoder.decode(body).message_id
    except Exception:  # not JSON, no message_id, nested too deeply: no id to tell
        return None


def dead_letter_filter(
    *,
    message_ids: Iterable[str] | None = None,
    actor_name: str | None = None,
    older_than: float | None = None,
) -> Callable[[DeadLetter], bool]:
    """A predicate selecting dead letters by id, actor and age (all given conditions hold)."""
    ids = None if message_ids is None else set(message_ids)
    cutoff = None if older_than is None else time.time() - older_than

    def select(letter: DeadLetter) -> bool:
        if ids is not None and letter.message_id not in ids:
            return False
        if actor_name is not None:
            message = letter.message
            if letter.actor_name != actor_name and (
                message is None or message.actor_name != actor_name
            ):
                return False
        if cutoff is not None:
            failed = letter.failed_at_timestamp
            if failed is not None and failed > cutoff:
                return False
        return True

    return select


def replay_message(letter: DeadLetter, queue_name: str) -> Message:
    """The message of a dead letter, ready to send again: retry and redelivery counters reset.

    Raises:
        MessageDecodeError: the dead letter is not an aqueue message.
    """
    message = Message.decode(letter.body)
    # Counters reset: a replay is a new attempt, not a copy of the one that failed.
    counters = ("retries", "first_failed_at", "redeliveries")
    options = {k: v for k, v in message.options.items() if k not in counters}
    return msgspec.structs.replace(message, queue_name=queue_name, options=options)
