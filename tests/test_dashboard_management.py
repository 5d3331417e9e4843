"""``ManagementApi.get_json``, which the workers page reads, against a stand-in HTTP server."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from yarl import URL

from aqueue.brokers.rabbitmq.management import ManagementApi, ManagementUnavailable, _Endpoint


class _Handler(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str | None]]] = []

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Authorization")))
        if self.path == "/api/consumers/%2F":
            body = json.dumps([{"queue": {"name": "emails"}}]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/api/redirect":
            self.send_response(302)
            self.send_header("Location", "http://elsewhere.invalid/")
            self.end_headers()
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


async def test_get_json_reads_with_the_brokers_credentials_and_404_is_none(server: str) -> None:
    api = ManagementApi.for_broker(["amqp://ops:pw@127.0.0.1:5672/"], server, timeout=2)
    assert await api.get_json("api/consumers/%2F") == [{"queue": {"name": "emails"}}]
    assert await api.get_json("api/nothing-here") is None
    with pytest.raises(ManagementUnavailable, match="HTTP 302"):
        await api.get_json("api/redirect")  # not followed: the credentials stay here
    credentials = "Basic " + base64.b64encode(b"ops:pw").decode()
    assert {auth for _, auth in _Handler.seen} == {credentials}


async def test_get_json_moves_on_to_the_endpoint_that_answers_and_asks_it_first(
    server: str,
) -> None:
    refusing = _Endpoint.of(URL("http://127.0.0.1:9/"), "guest", "guest")
    api = ManagementApi([refusing, _Endpoint.of(URL(server), "guest", "guest")], "/", timeout=2)
    assert await api.get_json("api/consumers/%2F") == [{"queue": {"name": "emails"}}]
    assert api.describe() == f"{server}, http://127.0.0.1:9/"


async def test_get_json_says_why_no_endpoint_answered_then_refuses_at_once() -> None:
    api = ManagementApi.for_broker(["amqp://127.0.0.1:5672/"], "http://127.0.0.1:9/", timeout=2)
    with pytest.raises(ManagementUnavailable, match=r"http://127.0.0.1:9/: .*refused"):
        await api.get_json("api/overview")
    with pytest.raises(ManagementUnavailable, match="refused"):
        await api.get_json("api/consumers/%2F")
