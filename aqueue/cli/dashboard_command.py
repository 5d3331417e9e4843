"""``aqueue dashboard``: serve the web dashboard of a module's queues with uvicorn."""

from __future__ import annotations

import logging

import click

from .._loading import LoadError, load_broker
from ._common import EXIT_USAGE_ERROR, fail

__all__ = ["TOKEN_ENVIRONMENT_VARIABLE", "dashboard", "check_binding"]

TOKEN_ENVIRONMENT_VARIABLE = "AQUEUE_DASHBOARD_TOKEN"


def check_binding(host: str, token: str | None) -> None:
    """Refuse to serve an open (token-less) dashboard beyond this machine: a usage error."""
    from ..dashboard._security import is_loopback

    if token is None and not is_loopback(host):
        fail(
            f"refusing to listen on {host} without a token: anyone who reaches it could "
            f"replay and purge dead letters; pass --token TOKEN (or set "
            f"{TOKEN_ENVIRONMENT_VARIABLE}), or listen on 127.0.0.1",
            EXIT_USAGE_ERROR,
        )


@click.command()
@click.argument("module", metavar="MODULE[:BROKER]")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--token",
    envvar=TOKEN_ENVIRONMENT_VARIABLE,
    metavar="TOKEN",
    help=f"Every request must carry it (also from {TOKEN_ENVIRONMENT_VARIABLE}); "
    "required to listen beyond loopback.",
)
@click.option(
    "--events",
    "events_stream",
    metavar="STREAM",
    default=None,
    help="Read task history from this stream (workers with TaskEvents; "
    "its default name is aqueue.events).",
)
@click.option(
    "--management-url",
    metavar="URL",
    help="Where RabbitMQ's management API is (default: AQUEUE_MANAGEMENT_URL, "
    "else port 15672 of the broker's host).",
)
def dashboard(
    module: str,
    host: str,
    port: int,
    token: str | None,
    events_stream: str | None,
    management_url: str | None,
) -> None:
    """Serve the web dashboard of the queues of MODULE's actors.

    Queues with their counts and charts, dead letters with replay and purge, workers,
    and task history. It listens on 127.0.0.1 unless --host says otherwise, which needs
    a token.
    """
    token = token or None
    check_binding(host, token)
    try:
        import uvicorn

        from ..dashboard._app import Dashboard
    except ImportError as exc:
        fail(
            f"the dashboard needs its extra: pip install 'aqueue[dashboard]' ({exc})",
            EXIT_USAGE_ERROR,
        )
    try:
        broker = load_broker([module])
    except LoadError as exc:
        fail(str(exc), EXIT_USAGE_ERROR)
    from ..dashboard._security import LOOPBACK_NAMES, is_loopback

    app = Dashboard(
        broker,
        token=token,
        # Without a token, only this machine's names: a DNS-rebinding page gets nothing.
        allowed_hosts=LOOPBACK_NAMES if token is None and is_loopback(host) else None,
        management_url=management_url,
        events_stream=events_stream,
        close_broker=True,
    )
    debug = bool((click.get_current_context().find_root().obj or {}).get("debug"))
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(message)s")
    click.echo(f"aqueue dashboard: {len(app.queue_names)} queues on http://{host}:{port}/")
    uvicorn.run(app, host=host, port=port, log_level="debug" if debug else "warning")
