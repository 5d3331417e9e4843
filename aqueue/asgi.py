"""ASGI helpers (FastAPI, Starlette, ...): connect the broker for the app's lifetime.

No web framework is imported: a lifespan is any async context manager factory.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from .broker import Broker, get_broker
from .worker import Worker

__all__ = ["lifespan"]


def lifespan(
    broker: Broker | None = None, *, worker: bool = False, **worker_options: Any
) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """A lifespan that connects ``broker`` at startup and closes it at shutdown.

    ``FastAPI(lifespan=aqueue.asgi.lifespan(broker))``. Sends from request handlers
    then share the process's one connection and never pay for connecting.

    Args:
        broker: The broker (default: :func:`aqueue.get_broker` at startup).
        worker: Also run a :class:`~aqueue.Worker` in the app's process (handy for
            small deployments; separate worker processes scale better).
        **worker_options: Options of that worker (``queues``, ``concurrency``, ...).
    """

    @contextlib.asynccontextmanager
    async def run(app: Any) -> AsyncIterator[None]:
        target = broker if broker is not None else get_broker()
        async with target:
            if not worker:
                yield
                return
            async with Worker(target, **worker_options):
                yield

    return run
