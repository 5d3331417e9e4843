"""Actor options: which ones a middleware stack accepts, and their validation."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .errors import ActorDefinitionError, ValidationError

if TYPE_CHECKING:
    from .middleware.base import Middleware

__all__ = ["CORE_ACTOR_OPTIONS", "accepted_options", "normalize_options"]

#: Options every actor accepts, whatever the middleware.
CORE_ACTOR_OPTIONS = frozenset({"actor_name", "queue_name", "concurrency", "broker"})


def accepted_options(middleware: Iterable[Middleware]) -> frozenset[str]:
    """Names of the options actors may set with ``middleware`` (core and middleware)."""
    names = set(CORE_ACTOR_OPTIONS)
    for m in middleware:
        names |= m.actor_options
    return frozenset(names)


def normalize_options(
    middleware: list[Middleware],
    options: dict[str, Any],
    *,
    owner: str,
    for_message: bool = False,
) -> dict[str, Any]:
    """Validate options against ``middleware``; return them normalized.

    Raises:
        ActorDefinitionError: for actor options (``for_message=False``).
        ValidationError: for per-message options.
    """
    error: type[Exception] = ValidationError if for_message else ActorDefinitionError
    normalized: dict[str, Any] = {}
    for name, value in options.items():
        owner_middleware = next((m for m in middleware if name in m.actor_options), None)
        if owner_middleware is None:
            accepted = accepted_options(middleware)
            middleware_options = accepted - CORE_ACTOR_OPTIONS
            names = sorted(middleware_options if for_message else accepted - {"broker"})
            raise error(f"{owner}: unknown option {name!r} (accepted: {', '.join(names)})")
        if for_message and name in getattr(owner_middleware, "actor_only_options", ()):
            raise error(f"{owner}: option {name!r} can only be set on the actor")
        try:
            normalized[name] = owner_middleware.normalize_option(name, value)
        except (ValueError, TypeError) as exc:  # ActorDefinitionError is a TypeError
            raise error(f"{owner}: {exc}") from None
    return normalized
