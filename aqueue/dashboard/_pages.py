"""The HTML pages: overview, a queue (with its dead letters), workers, schedules, history,
login.

Pages are rendered on the server; forms POST and redirect back (the page works without
JavaScript, which only adds select-all, confirmations and refreshing).
"""

from __future__ import annotations

import time
import urllib.parse
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from .._admin_format import format_duration
from . import _letters, _schedules, _workers
from ._letters import Selection
from ._security import COOKIE, CSRF_FIELD, parse_form

if TYPE_CHECKING:
    from ._app import Dashboard

__all__ = ["ROUTES"]


def dashboard_of(request: Request) -> Dashboard:
    return request.app.state.dashboard  # type: ignore[no-any-return]


def _base(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


async def overview(request: Request) -> Response:
    dashboard = dashboard_of(request)
    sampler = dashboard.sampler
    try:
        rows = await sampler.refresh()
        error = sampler.error
    except Exception as exc:
        rows, error = sampler.rows, f"{type(exc).__name__}: {exc}"
    queues = [
        {
            "row": rows.get(name),
            "name": name,
            "ready_series": [v for _, v in sampler.series(name, "ready")],
            "dead_series": [v for _, v in sampler.series(name, "dead_letters")],
            "rate": sampler.rate(name),
            "actors": sorted(a for a, x in dashboard.broker.actors.items() if x.queue_name == name),
        }
        for name in dashboard.queue_names
    ]
    return dashboard.render(
        request,
        "overview.html",
        queues=queues,
        error=error,
        unacked_note=sampler.unacked_note(),
        interval=sampler.interval,
        samples_span=format_duration(round(sampler.interval * 360)),
    )


async def queue_page(request: Request) -> Response:
    dashboard = dashboard_of(request)
    queue = request.path_params["queue"]
    if queue not in dashboard.queue_names:
        return dashboard.render(request, "missing.html", status=404, queue=queue)
    params = request.query_params
    try:
        selection = Selection.of(dict(params))
        filter_error = None
    except ValueError as exc:
        selection, filter_error = Selection(), str(exc)
    rows = await dashboard.sampler.refresh()
    letters = await _letters.read_letters(dashboard.broker, queue)
    now = time.time()
    shown = [letter for letter in letters if selection.matches(letter, now)]
    actors, reasons = _letters.letter_choices(letters)
    notice = None
    for verb in ("replayed", "purged"):
        if params.get(verb, "").isdigit():
            count = int(params[verb])
            notice = f"{verb.capitalize()} {count} dead letter{'s' if count != 1 else ''}."
    if params.get("nothing") == "selected":
        notice = "Nothing selected: tick the dead letters first."
    actor_names = sorted(a for a, x in dashboard.broker.actors.items() if x.queue_name == queue)
    return dashboard.render(
        request,
        "queue.html",
        queue=queue,
        row=rows.get(queue),
        actors=[dashboard.broker.actors[name] for name in actor_names],
        letters=[_letters.letter_row(letter) for letter in shown[:500]],
        shown=len(shown),
        total=len(letters),
        filters={k: params.get(k, "") for k in ("actor", "reason", "older_than")},
        filtered=bool(selection.filters),
        letter_actors=actors,
        letter_reasons=reasons,
        notice=notice,
        filter_error=filter_error,
    )


async def letters_action(request: Request) -> Response:
    """POST /queues/{queue}/replay or /purge from the queue page's form."""
    dashboard = dashboard_of(request)
    queue = request.path_params["queue"]
    action = request.path_params["action"]
    if queue not in dashboard.queue_names or action not in ("replay", "purge"):
        return Response("not found", status_code=404, media_type="text/plain")
    form = parse_form(await request.body())
    if not dashboard.guard.csrf_ok(request, {CSRF_FIELD: _first(form, CSRF_FIELD)}):
        return Response("missing or wrong CSRF token", status_code=403, media_type="text/plain")
    filters = {k: (form.get(k) or [""])[0] for k in ("actor", "reason", "older_than")}
    back = {k: v for k, v in filters.items() if v}
    target = f"{_base(request)}/queues/{urllib.parse.quote(queue)}"
    if "one" in form:
        selection = Selection(message_ids=tuple(form["one"][:1]))
    elif (form.get("scope") or [""])[0] == "selected":
        ids = form.get("message_id", [])
        if not ids:
            return RedirectResponse(f"{target}?{_query({**back, 'nothing': 'selected'})}", 303)
        selection = Selection(message_ids=tuple(dict.fromkeys(ids)))
    else:
        try:
            selection = Selection.of(filters)
        except ValueError as exc:
            return Response(str(exc), status_code=400, media_type="text/plain")
    if action == "replay":
        count = await _letters.replay(dashboard.broker, queue, selection)
    else:
        count = await _letters.purge(dashboard.broker, queue, selection)
    verb = "replayed" if action == "replay" else "purged"
    return RedirectResponse(f"{target}?{_query({**back, verb: str(count)})}", 303)


def _first(form: dict[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None


def _query(values: dict[str, Any]) -> str:
    return urllib.parse.urlencode(values)


async def workers_page(request: Request) -> Response:
    dashboard = dashboard_of(request)
    found = await _workers.workers(dashboard.broker, dashboard.management_url)
    seen = dashboard.history.processes()
    return dashboard.render(
        request, "workers.html", found=found, seen=seen, now=time.time(), events=dashboard.history
    )


async def schedules_page(request: Request) -> Response:
    dashboard = dashboard_of(request)
    error = None
    try:
        rows = await _schedules.schedule_rows(dashboard.broker)
    except Exception as exc:  # RabbitMQ away: say so on the page
        rows, error = [], f"{type(exc).__name__}: {exc}"
    return dashboard.render(
        request,
        "schedules.html",
        rows=rows,
        error=error,
        declared=len(dashboard.broker.schedules),
        interval=dashboard.sampler.interval,
    )


async def history_page(request: Request) -> Response:
    dashboard = dashboard_of(request)
    history = dashboard.history
    actor = request.query_params.get("actor") or None
    outcome = request.query_params.get("outcome") or None
    return dashboard.render(
        request,
        "history.html",
        history=history,
        stats=history.stats(),
        events=history.recent(actor=actor, outcome=outcome, limit=200),
        actor=actor or "",
        outcome=outcome or "",
        now=time.time(),
    )


async def login(request: Request) -> Response:
    dashboard = dashboard_of(request)
    base = _base(request)
    if dashboard.guard.token is None:
        return RedirectResponse(f"{base}/", 303)
    if request.method == "GET":
        target = request.query_params.get("next", f"{base}/")
        return dashboard.render(request, "login.html", status=200, error=None, next=target)
    form = parse_form(await request.body())
    target = (form.get("next") or [""])[0]
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        target = f"{base}/"
    if not dashboard.guard.token_matches(_first(form, "token")):
        return dashboard.render(request, "login.html", status=401, error="wrong token", next=target)
    response = RedirectResponse(target, 303)
    dashboard.guard.session_cookie(response, request)
    return response


async def logout(request: Request) -> Response:
    dashboard = dashboard_of(request)
    form = parse_form(await request.body())
    if not dashboard.guard.csrf_ok(request, {CSRF_FIELD: _first(form, CSRF_FIELD)}):
        return Response("missing or wrong CSRF token", status_code=403, media_type="text/plain")
    response = RedirectResponse(f"{_base(request)}/login", 303)
    response.delete_cookie(COOKIE, path=request.scope.get("root_path") or "/")
    return response


ROUTES = [
    Route("/", overview, name="overview"),
    Route("/queues/{queue}", queue_page, name="queue"),
    Route("/queues/{queue}/{action}", letters_action, methods=["POST"], name="letters_action"),
    Route("/workers", workers_page, name="workers"),
    Route("/schedules", schedules_page, name="schedules"),
    Route("/history", history_page, name="history"),
    Route("/login", login, methods=["GET", "POST"], name="login"),
    Route("/logout", logout, methods=["POST"], name="logout"),
]
