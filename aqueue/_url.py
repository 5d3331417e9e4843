"""Broker URLs in logs and errors, never with the password."""

from __future__ import annotations

from yarl import URL

_SCHEMES = {"amqp": 5672, "amqps": 5671}


def _parse(url: str) -> URL:
    try:
        parsed = URL(url)
    except (TypeError, ValueError):
        raise ValueError(
            "invalid broker URL (expected amqp://user:password@host:port/vhost)"
        ) from None
    if parsed.scheme not in _SCHEMES or not parsed.host:
        raise ValueError(
            f"invalid broker URL scheme or host {parsed.scheme or '(none)'}://{parsed.host or ''}: "
            "expected amqp://user:password@host:port/vhost or amqps://..."
        )
    return parsed


def describe_url(url: str) -> str:
    """``host:port`` of a broker URL; raises ValueError for a URL that is not AMQP."""
    parsed = _parse(url)
    return f"{parsed.host}:{parsed.port or _SCHEMES[parsed.scheme]}"


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***``."""
    parsed = _parse(url)
    if parsed.password is not None:
        parsed = parsed.with_password("***")
    return str(parsed)
