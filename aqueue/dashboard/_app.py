"""The dashboard as one ASGI app: its state, its background tasks, its pages' rendering.

The routes are in ``_pages`` (HTML) and ``_api`` (JSON); who may call them is decided by
``_security.GuardMiddleware`` before either sees a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

import jinja2
import markupsafe
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from .. import __version__
from ..broker import Broker
from ._history import History
from ._samples import Sampler, sparkline
from ._security import Guard, GuardMiddleware

__all__ = ["Dashboard"]

log = logging.getLogger("aqueue.dashboard")

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("aqueue.dashboard", "templates"),
    autoescape=True,  # every value is escaped unless marked safe (only our own SVG is)
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


class Dashboard:
    """The dashboard of ``broker``'s queues: an ASGI app (see :func:`aqueue.dashboard.app`).

    Its background work (queue samples every ``sample_interval`` seconds, reading the
    event stream) starts with the ASGI lifespan, or with the first request when the app
    is mounted in another (whose lifespan Starlette does not pass on); :meth:`close`
    stops it.
    """

    def __init__(
        self,
        broker: Broker,
        *,
        token: str | None = None,
        queues: Iterable[str] = (),
        allowed_hosts: Iterable[str] | None = None,
        management_url: str | None = None,
        sample_interval: float = 5.0,
        events_stream: str | None = None,
        history_window: float = 24 * 3600.0,
        close_broker: bool = False,
    ) -> None:
        from . import _api, _pages

        self.broker = broker
        self.queue_names = sorted({*broker.queue_names, *queues})
        self.guard = Guard(token, allowed_hosts=allowed_hosts)
        self.management_url = management_url
        self.sampler = Sampler(
            broker, self.queue_names, interval=sample_interval, management_url=management_url
        )
        self.history = History(broker, stream=events_stream, window=history_window)
        self.close_broker = close_broker
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        static = StaticFiles(packages=[("aqueue.dashboard", "static")])
        inner = Starlette(routes=[*_pages.ROUTES, *_api.ROUTES, Mount("/static", static)])
        inner.state.dashboard = self
        self._app = GuardMiddleware(inner, self.guard, self.login_page)

    def __repr__(self) -> str:
        return f"Dashboard({self.broker!r}, queues={self.queue_names!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        await self.start()
        await self._app(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def start(self) -> None:
        """Start the background tasks (once; later calls return at once)."""
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            self._stop = asyncio.Event()
            self._tasks = [
                asyncio.create_task(self.sampler.run(self._stop), name="aqueue-dashboard-samples"),
                asyncio.create_task(self.history.run(self._stop), name="aqueue-dashboard-history"),
            ]
            self._started = True

    async def close(self) -> None:
        """Stop the background tasks (and close the broker if the dashboard owns it)."""
        tasks, self._tasks = self._tasks, []
        self._stop.set()
        if tasks:
            # Let them finish what they are doing (a connect, a sample), then cancel.
            _, pending = await asyncio.wait(tasks, timeout=10.0)
            for task in pending:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._started = False
        await self.history.close()
        if self.close_broker:
            await self.broker.close()

    # -- rendering ------------------------------------------------------------------------

    def render(
        self, request: Request, template: str, *, status: int = 200, **context: Any
    ) -> HTMLResponse:
        """The page ``template`` with ``context`` and what every page needs."""
        base = str(request.scope.get("root_path", "")).rstrip("/")
        page = _TEMPLATES.get_template(template).render(
            base=base,
            csrf=self.guard.csrf_token,
            token_set=self.guard.token is not None,
            version=__version__,
            path=request.url.path,
            sparkline=lambda values: markupsafe.Markup(sparkline(values)),
            **context,
        )
        return HTMLResponse(
            page,
            status_code=status,
            headers={
                "Content-Security-Policy": (
                    "default-src 'self'; script-src 'self'; style-src 'self'; "
                    "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'"
                ),
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "same-origin",
                "Cache-Control": "no-store",
            },
        )

    async def login_page(self, request: Request, error: str | None) -> Response:
        """The form that asks for the token (status 401)."""
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return self.render(request, "login.html", status=401, error=error, next=target)
