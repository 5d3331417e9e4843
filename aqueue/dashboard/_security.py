"""Who may use the dashboard: the token, its cookie, the host, and cross-site checks.

- With a token, every request needs it: ``Authorization: Bearer TOKEN``, or the session
  cookie that ``?token=TOKEN`` on a page (or the login form) sets. The cookie holds an
  HMAC of the token, not the token; it is HttpOnly and SameSite=Strict.
- A POST is accepted from a Bearer client, or with the CSRF token of the pages (a
  ``csrf`` form field or an ``X-CSRF-Token`` header); a POST whose ``Origin`` or
  ``Sec-Fetch-Site`` says it comes from another site is refused whatever it carries.
- ``allowed_hosts`` (set by ``aqueue dashboard`` when it runs without a token) refuses
  other ``Host`` headers, so a DNS-rebinding page cannot talk to a loopback dashboard.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = [
    "COOKIE",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "LOOPBACK_NAMES",
    "Guard",
    "GuardMiddleware",
    "is_loopback",
    "route_path",
]

COOKIE = "aqueue_dashboard"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
#: Paths that answer without the token (the login form and the stylesheet it uses).
_OPEN_PATHS = ("/login", "/static/")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def route_path(scope: Scope) -> str:
    """The request path below the mount point (``root_path``)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class Guard:
    """The token (or none), the values derived from it, and the checks.

    Args:
        token: The token every request must carry; None leaves the dashboard open (run
            it on loopback only: the CLI refuses anything else).
        allowed_hosts: ``Host`` header values accepted (any when None).
    """

    def __init__(self, token: str | None, *, allowed_hosts: Iterable[str] | None = None) -> None:
        if token is not None and not token.strip():
            raise ValueError("the dashboard token must not be empty")
        self.token = token
        # Derived from the token, so that cookies and pages survive a restart; random otherwise.
        secret = token.encode() if token is not None else secrets.token_bytes(32)
        self._key = hashlib.sha256(b"aqueue-dashboard\0" + secret).digest()
        self.session = self._derive("session")
        self.csrf_token = self._derive("csrf")
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    def _derive(self, purpose: str) -> str:
        return hmac.new(self._key, purpose.encode(), hashlib.sha256).hexdigest()

    def token_matches(self, given: str | None) -> bool:
        if self.token is None or given is None:
            return False
        return hmac.compare_digest(given.encode(), self.token.encode())

    def host_allowed(self, connection: HTTPConnection) -> bool:
        if self.allowed_hosts is None:
            return True
        host = connection.headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name.strip("[]").lower() in self.allowed_hosts

    def authentication(self, connection: HTTPConnection) -> str | None:
        """``"open"`` (no token set), ``"bearer"``, ``"cookie"``, or None (not allowed)."""
        if self.token is None:
            return "open"
        authorization = connection.headers.get("authorization")
        if authorization is not None:
            scheme, _, value = authorization.partition(" ")
            ok = scheme.lower() == "bearer" and self.token_matches(value.strip())
            return "bearer" if ok else None
        cookie = connection.cookies.get(COOKIE)
        if cookie is not None and hmac.compare_digest(cookie, self.session):
            return "cookie"
        return None

    def cross_site(self, connection: HTTPConnection) -> bool:
        """Whether the browser says the request comes from another site."""
        if connection.headers.get("sec-fetch-site", "") == "cross-site":
            return True
        origin = connection.headers.get("origin")
        if origin is None:
            return False
        if origin == "null":
            return True
        return (
            urllib.parse.urlsplit(origin).netloc.lower()
            != connection.headers.get("host", "").lower()
        )

    def csrf_ok(self, request: Request, form: Mapping[str, Any] | None = None) -> bool:
        """Whether a POST may change state: a Bearer client, or the pages' CSRF token."""
        if request.scope.get("aqueue.auth") == "bearer":
            return True
        given = request.headers.get(CSRF_HEADER)
        if given is None and form is not None:
            value = form.get(CSRF_FIELD)
            given = value if isinstance(value, str) else None
        return given is not None and hmac.compare_digest(given, self.csrf_token)

    def session_cookie(self, response: Response, connection: HTTPConnection) -> None:
        """Set the session cookie on ``response``."""
        response.set_cookie(
            COOKIE,
            self.session,
            path=connection.scope.get("root_path") or "/",
            httponly=True,
            samesite="strict",
            secure=connection.url.scheme == "https",
        )


LoginPage = Callable[[Request, str | None], Awaitable[Response]]


class GuardMiddleware:
    """Checks the host, the token and cross-site POSTs before the dashboard sees a request."""

    def __init__(self, app: ASGIApp, guard: Guard, login_page: LoginPage) -> None:
        self.app = app
        self.guard = guard
        self.login_page = login_page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        response = await self._refusal(request)
        if response is not None:
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _refusal(self, request: Request) -> Response | None:
        guard = self.guard
        path = route_path(request.scope)
        if not guard.host_allowed(request):
            return Response("invalid Host header", status_code=400, media_type="text/plain")
        if request.method not in ("GET", "HEAD") and guard.cross_site(request):
            return _error(path, 403, "cross-site request refused")
        auth = guard.authentication(request)
        if auth is not None:
            request.scope["aqueue.auth"] = auth
            return None
        if any(path == p or (p.endswith("/") and path.startswith(p)) for p in _OPEN_PATHS):
            return None
        given = request.query_params.get("token")
        if request.method == "GET" and guard.token_matches(given):
            # Drop the token from the address bar (and from history and logs): a cookie now.
            query = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.path + (f"?{urllib.parse.urlencode(query)}" if query else "")
            redirect = RedirectResponse(target, 303)
            guard.session_cookie(redirect, request)
            return redirect
        if path.startswith("/api/"):
            return _error(path, 401, "a valid token is needed (Authorization: Bearer TOKEN)")
        return await self.login_page(
            request, "a token is needed" if given is None else "wrong token"
        )


def _error(path: str, status: int, text: str) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if path.startswith("/api/"):
        return JSONResponse({"error": text}, status_code=status, headers=headers)
    return Response(text, status_code=status, media_type="text/plain", headers=headers)


def json_error(status: int, text: str) -> JSONResponse:
    """An API error: ``{"error": text}``."""
    return JSONResponse({"error": text}, status_code=status)


def parse_form(body: bytes) -> dict[str, list[str]]:
    """An ``application/x-www-form-urlencoded`` body (no multipart: the pages never send it)."""
    return urllib.parse.parse_qs(body.decode(errors="replace"), keep_blank_values=True)


def parse_json_object(body: bytes) -> dict[str, Any] | None:
    """A JSON object body (an empty body is an empty object); None if it is not one."""
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
