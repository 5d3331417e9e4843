"""A web dashboard for aqueue's RabbitMQ queues: counts, dead letters with replay, workers,
history.

``aqueue dashboard MODULE[:BROKER]`` serves it; :func:`app` builds it as an ASGI app to
mount in FastAPI or Starlette. It needs the ``dashboard`` extra (Starlette, Jinja2,
uvicorn), imported only when :func:`app` is called. The task events middleware that feeds
the history is :class:`aqueue.middleware.TaskEvents`, which needs none of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..broker import Broker

if TYPE_CHECKING:
    from ._app import Dashboard

__all__ = ["app"]


def app(
    broker: Broker,
    *,
    token: str | None = None,
    queues: Iterable[str] = (),
    allowed_hosts: Iterable[str] | None = None,
    management_url: str | None = None,
    events_stream: str | None = None,
    sample_interval: float = 5.0,
) -> Dashboard:
    """The dashboard of ``broker``'s queues, as an ASGI app.

    ``fastapi_app.mount("/dashboard", aqueue.dashboard.app(broker, token=...))``.

    Args:
        broker: The broker whose actors' queues are shown (a RabbitmqBroker).
        token: Every request must carry it (``Authorization: Bearer``, or the cookie a
            ``?token=`` link or the login form sets). Without one, anyone who can reach
            the app may replay and purge: keep it on loopback.
        queues: More queues to show, beside those of the broker's actors.
        allowed_hosts: ``Host`` header values accepted (default: any).
        management_url: Where the RabbitMQ management API is (unacknowledged counts and
            the workers page), as for ``aqueue queues --management-url``.
        events_stream: The stream workers publish task events to
            (:class:`~aqueue.middleware.TaskEvents`); None: no history page.
        sample_interval: Seconds between samples of the queues' counts.
    """
    from ._app import Dashboard

    return Dashboard(
        broker,
        token=token,
        queues=queues,
        allowed_hosts=allowed_hosts,
        management_url=management_url,
        events_stream=events_stream,
        sample_interval=sample_interval,
    )
