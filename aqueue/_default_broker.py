"""The process-wide default broker, used by ``@aqueue.actor`` without ``broker=``.

It sits below the broker interface and its implementations: the package root registers
the factory of the default (``RabbitmqBroker``), so no lower module imports an upper one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .broker import Broker

__all__ = ["get_broker", "set_broker"]

#: The default broker once set or made; None before.
broker: Broker | None = None
_factory: Callable[[], Broker] | None = None


def set_default_factory(factory: Callable[[], Broker]) -> None:
    """Set what :func:`get_broker` makes when no broker was set (done by ``aqueue``)."""
    global _factory
    _factory = factory


def set_broker(new: Broker) -> None:
    """Make ``broker`` the process-wide default used by :func:`aqueue.actor`."""
    global broker
    broker = new


def get_broker() -> Broker:
    """The process-wide default broker; a :class:`~aqueue.RabbitmqBroker` is made on first use."""
    global broker
    if broker is None:
        if _factory is None:  # pragma: no cover - importing any aqueue module sets it
            raise RuntimeError("no default broker: import aqueue first")
        broker = _factory()
    return broker
