"""RabbitMQ flow control: notice ``connection.blocked`` and ``connection.unblocked``.

RabbitMQ sends these frames to a connection it stops reading because of a memory or
disk alarm. aiormq receives them but offers no callback (only ``Connection.ready()``,
which waits while blocked), so this module wraps its two private frame handlers on each
connection object. It is the one place that knows these names; ``check_aiormq()`` fails
loudly (and a test fails) if an aiormq release renames them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib.metadata import version
from typing import Any

import aiormq

_BLOCKED = "_Connection__handle_connection_blocked"
_UNBLOCKED = "_Connection__handle_connection_unblocked"


def check_aiormq() -> None:
    """Raise RuntimeError if aiormq no longer has the frame handlers this module wraps."""
    for name in (_BLOCKED, _UNBLOCKED):
        if not callable(getattr(aiormq.Connection, name, None)):
            raise RuntimeError(
                f"aiormq {version('aiormq')} has no Connection.{name}: aqueue cannot track "
                "RabbitMQ's connection.blocked frames with this version"
            )


def watch_flow_control(
    connection: aiormq.abc.AbstractConnection,
    on_blocked: Callable[[str], None],
    on_unblocked: Callable[[], None],
) -> None:
    """Call ``on_blocked(reason)`` and ``on_unblocked()`` as RabbitMQ (un)blocks ``connection``."""
    original_blocked: Callable[[Any], Awaitable[None]] = getattr(connection, _BLOCKED)
    original_unblocked: Callable[[Any], Awaitable[None]] = getattr(connection, _UNBLOCKED)

    async def blocked(frame: Any) -> None:
        await original_blocked(frame)
        on_blocked(str(getattr(frame, "reason", "") or "no reason given"))

    async def unblocked(frame: Any) -> None:
        await original_unblocked(frame)
        on_unblocked()

    # Instance attributes shadow the class's methods for the reader's self.__handle_* calls.
    setattr(connection, _BLOCKED, blocked)
    setattr(connection, _UNBLOCKED, unblocked)
