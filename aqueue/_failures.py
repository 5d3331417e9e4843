"""The headers that say why a message was dead-lettered."""

from __future__ import annotations

import datetime
import traceback

MAX_TRACEBACK_CHARS = 8000
MAX_ERROR_CHARS = 1000

# Reasons a message ends up in its dead-letter queue.
UNDECODABLE = "undecodable"
TOO_LARGE = "too-large"
UNKNOWN_ACTOR = "unknown-actor"
INVALID_ARGUMENTS = "invalid-arguments"
FAILED = "failed"


def failure_headers(
    reason: str, exc: BaseException, *, queue_name: str, actor_name: str | None = None
) -> dict[str, str]:
    """Headers for a dead letter: reason, actor, exception and a bounded traceback."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if len(text) > MAX_TRACEBACK_CHARS:
        text = "...\n" + text[-MAX_TRACEBACK_CHARS:]
    headers = {
        "x-aqueue-reason": reason,
        "x-aqueue-queue": queue_name,
        "x-aqueue-exception": type(exc).__qualname__,
        "x-aqueue-error": str(exc)[:MAX_ERROR_CHARS],
        "x-aqueue-traceback": text,
        "x-aqueue-failed-at": now_iso(),
    }
    if actor_name is not None:
        headers["x-aqueue-actor"] = actor_name
    return headers


def now_iso() -> str:
    """Now, ISO 8601 in UTC."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat()
