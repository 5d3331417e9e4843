"""The JSON API under ``/api/``, which the pages' data comes from too.

``GET /api/queues``, ``GET /api/queues/{queue}/dead-letters``,
``POST /api/queues/{queue}/dead-letters/replay`` and ``.../purge`` (optional JSON body:
``message_ids``, ``actor``, ``reason``, ``older_than``), ``GET /api/workers``,
``GET /api/schedules``, ``GET /api/history``, ``GET /api/csrf``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import _letters, _schedules, _workers
from ._letters import Selection
from ._samples import row_json
from ._security import json_error, parse_json_object

if TYPE_CHECKING:
    from ._app import Dashboard

__all__ = ["ROUTES"]


def _dashboard(request: Request) -> Dashboard:
    return request.app.state.dashboard  # type: ignore[no-any-return]


def _queue(request: Request) -> str | None:
    queue: str = request.path_params["queue"]
    return queue if queue in _dashboard(request).queue_names else None


async def queues(request: Request) -> Response:
    sampler = _dashboard(request).sampler
    rows = await sampler.refresh()
    return JSONResponse([row_json(rows[name], sampler) for name in sampler.queues])


async def dead_letters(request: Request) -> Response:
    queue = _queue(request)
    if queue is None:
        return json_error(404, f"no queue {request.path_params['queue']!r} in this dashboard")
    try:
        selection = Selection.of(dict(request.query_params))
        limit = int(request.query_params.get("limit", "1000"))
    except ValueError as exc:
        return json_error(400, str(exc))
    letters = await _letters.read_letters(_dashboard(request).broker, queue)
    now = time.time()
    chosen = [letter for letter in letters if selection.matches(letter, now)][: max(limit, 0)]
    return JSONResponse([_letters.letter_row(letter) for letter in chosen])


async def _change(request: Request, action: str) -> Response:
    dashboard = _dashboard(request)
    queue = _queue(request)
    if queue is None:
        return json_error(404, f"no queue {request.path_params['queue']!r} in this dashboard")
    if not dashboard.guard.csrf_ok(request):
        return json_error(403, "send the X-CSRF-Token header (GET /api/csrf) or a Bearer token")
    body = parse_json_object(await request.body())
    if body is None:
        return json_error(400, "the body must be a JSON object (or empty)")
    try:
        selection = Selection.of(body)
    except ValueError as exc:
        return json_error(400, str(exc))
    if action == "replay":
        return JSONResponse({"replayed": await _letters.replay(dashboard.broker, queue, selection)})
    return JSONResponse({"purged": await _letters.purge(dashboard.broker, queue, selection)})


async def replay(request: Request) -> Response:
    return await _change(request, "replay")


async def purge(request: Request) -> Response:
    return await _change(request, "purge")


async def workers(request: Request) -> Response:
    dashboard = _dashboard(request)
    found = await _workers.workers(dashboard.broker, dashboard.management_url)
    return JSONResponse(
        {
            "from_management_api": [w.asdict() for w in found.processes],
            "management_api_unavailable": found.unavailable,
            "from_events": [p.asdict() for p in dashboard.history.processes()],
        }
    )


async def schedules(request: Request) -> Response:
    rows = await _schedules.schedule_rows(_dashboard(request).broker)
    return JSONResponse([row.asdict() for row in rows])


async def history(request: Request) -> Response:
    h = _dashboard(request).history
    actor = request.query_params.get("actor") or None
    outcome = request.query_params.get("outcome") or None
    return JSONResponse(
        {
            "stream": h.stream,
            "unavailable": h.unavailable,
            "stats": [s.asdict() for s in h.stats()],
            "events": [e.asdict() for e in h.recent(actor=actor, outcome=outcome, limit=500)],
        }
    )


async def csrf(request: Request) -> Response:
    return JSONResponse({"csrf_token": _dashboard(request).guard.csrf_token})


ROUTES = [
    Route("/api/queues", queues),
    Route("/api/queues/{queue}/dead-letters", dead_letters),
    Route("/api/queues/{queue}/dead-letters/replay", replay, methods=["POST"]),
    Route("/api/queues/{queue}/dead-letters/purge", purge, methods=["POST"]),
    Route("/api/workers", workers),
    Route("/api/schedules", schedules),
    Route("/api/history", history),
    Route("/api/csrf", csrf),
]
