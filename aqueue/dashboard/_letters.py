"""Dead letters for the dashboard: which ones a request means, and replaying or purging them.

Replays and purges go through the broker's ``requeue_dead_letters`` and
``purge_dead_letters``, as ``aqueue dlq`` does: each replayed message is published and
confirmed before its dead letter is removed. A filter the broker does not take (reason,
age for a replay) is turned into the message ids of the dead letters it matches.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._admin_format import parse_duration
from ..broker import Broker
from ..dead_letters import DeadLetter
from ..topology import dead_letter_queue_name

__all__ = ["Selection", "letter_row", "purge", "read_letters", "replay"]

#: Dead letters read at most to list or select them (each read is a basic.get).
MAX_READ = 5000


@dataclass(frozen=True)
class Selection:
    """Which dead letters: these ids, and/or those matching actor, reason and age.

    An empty selection means every dead letter of the queue.
    """

    message_ids: tuple[str, ...] | None = None
    actor: str | None = None
    reason: str | None = None
    older_than: float | None = None

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> Selection:
        """From query parameters, form fields or a JSON object; ValueError if malformed."""

        def text(name: str) -> str | None:
            value = values.get(name)
            if isinstance(value, list):
                value = value[0] if value else None
            if value is None:
                return None
            if not isinstance(value, str):
                raise ValueError(f"{name} must be a string")
            return value.strip() or None

        ids = values.get("message_ids")
        if ids is not None and (
            not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)
        ):
            raise ValueError("message_ids must be a list of strings")
        age = values.get("older_than")
        older_than: float | None
        if isinstance(age, (int, float)) and not isinstance(age, bool):
            older_than = float(age)
        else:
            age_text = text("older_than")
            older_than = None if age_text is None else parse_duration(age_text)
        return cls(
            message_ids=None if ids is None else tuple(dict.fromkeys(ids)),
            actor=text("actor"),
            reason=text("reason"),
            older_than=older_than,
        )

    @property
    def everything(self) -> bool:
        return self.message_ids is None and self.filters == {}

    @property
    def filters(self) -> dict[str, Any]:
        """The filters given, for links and messages."""
        found = {"actor": self.actor, "reason": self.reason, "older_than": self.older_than}
        return {key: value for key, value in found.items() if value is not None}

    def matches(self, letter: DeadLetter, now: float | None = None) -> bool:
        if self.message_ids is not None and letter.message_id not in self.message_ids:
            return False
        if self.actor is not None and actor_of(letter) != self.actor:
            return False
        if self.reason is not None and letter.reason != self.reason:
            return False
        if self.older_than is not None:
            failed = letter.failed_at_timestamp
            if failed is None or failed > (now or time.time()) - self.older_than:
                return False
        return True


def actor_of(letter: DeadLetter) -> str | None:
    if letter.actor_name is not None:
        return letter.actor_name
    message = letter.message
    return None if message is None else message.actor_name


async def read_letters(broker: Broker, queue: str, *, limit: int = MAX_READ) -> list[DeadLetter]:
    """Up to ``limit`` dead letters of ``queue``, left in place ([] without a dead-letter queue)."""
    info = await broker.queue_info(dead_letter_queue_name(queue))
    if info is None or info.ready == 0:
        return []
    return await broker.dead_letters(queue, limit=min(limit, info.ready))


async def _ids_of(broker: Broker, queue: str, selection: Selection) -> list[str]:
    now = time.time()
    letters = await read_letters(broker, queue)
    return list(
        dict.fromkeys(
            letter.message_id
            for letter in letters
            if letter.message_id is not None and selection.matches(letter, now)
        )
    )


async def replay(broker: Broker, queue: str, selection: Selection) -> int:
    """Send the selected dead letters of ``queue`` back to it; how many were."""
    if selection.everything:
        return await broker.requeue_dead_letters(queue)
    if selection.filters == {"actor": selection.actor}:
        return await broker.requeue_dead_letters(
            queue, message_ids=selection.message_ids, actor_name=selection.actor
        )
    ids = (
        selection.message_ids if not selection.filters else await _ids_of(broker, queue, selection)
    )
    return await broker.requeue_dead_letters(queue, message_ids=ids) if ids else 0


async def purge(broker: Broker, queue: str, selection: Selection) -> int:
    """Delete the selected dead letters of ``queue``; how many were."""
    if selection.everything:
        return await broker.purge_dead_letters(queue)
    if selection.filters == {"older_than": selection.older_than}:
        return await broker.purge_dead_letters(
            queue, message_ids=selection.message_ids, older_than=selection.older_than
        )
    ids = (
        selection.message_ids if not selection.filters else await _ids_of(broker, queue, selection)
    )
    return await broker.purge_dead_letters(queue, message_ids=ids) if ids else 0


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)
    return moment.isoformat(timespec="seconds")


def letter_row(letter: DeadLetter) -> dict[str, Any]:
    """A dead letter as the API returns it and the queue page shows it."""
    message = letter.message
    return {
        "message_id": letter.message_id,
        "actor_name": actor_of(letter),
        "reason": letter.reason,
        "exception": letter.exception,
        "error": letter.error,
        "failed_at": letter.failed_at or _iso(letter.failed_at_timestamp),
        "retries": letter.retries,
        "traceback": letter.traceback,
        "args": None if message is None else list(message.args),
        "kwargs": None if message is None else dict(message.kwargs),
        "body": letter.body.decode(errors="replace")[:2000] if message is None else None,
    }


def letter_choices(letters: Sequence[DeadLetter]) -> tuple[list[str], list[str]]:
    """The actors and reasons among ``letters``, for the filter's drop-downs."""
    actors = sorted({a for a in map(actor_of, letters) if a is not None})
    reasons = sorted({r for r in (letter.reason for letter in letters) if r is not None})
    return actors, reasons
