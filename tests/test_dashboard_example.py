"""docs/examples/dashboard_app.py: the dashboard mounted in FastAPI, against the real RabbitMQ.

The example is copied with a queue name of the test's own (as ``tests/test_docs.py`` does),
imported, and requested through httpx's ASGI transport with the app's lifespan running.
"""

from __future__ import annotations

import importlib
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from .conftest import RABBITMQ_URL, RabbitAdmin

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "dashboard_app.py"
TOKEN = "example-s3cret"


@pytest.fixture
def example(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rabbit: RabbitAdmin
) -> Iterator[tuple[ModuleType, str]]:
    queue = f"payments-docs-{uuid.uuid4().hex[:8]}"
    rabbit.created.add(queue)  # deleted afterwards, with its dead-letter queue
    text = EXAMPLE.read_text().replace('"payments"', f'"{queue}"')
    (tmp_path / "dashboard_app.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("AQUEUE_BROKER_URL", RABBITMQ_URL)
    monkeypatch.setenv("AQUEUE_DASHBOARD_TOKEN", TOKEN)
    monkeypatch.delitem(sys.modules, "dashboard_app", raising=False)
    yield importlib.import_module("dashboard_app"), queue
    sys.modules.pop("dashboard_app", None)


async def test_the_mounted_dashboard_shows_the_apps_queue_behind_its_token(
    example: tuple[ModuleType, str],
) -> None:
    module, queue = example
    app = module.app
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            sent = await client.post("/orders/7")
            assert sent.status_code == 202

            refused = await client.get("/dashboard/")
            assert refused.status_code == 401  # the login form
            assert 'action="/dashboard/login"' in refused.text

            headers = {"Authorization": f"Bearer {TOKEN}"}
            page = await client.get("/dashboard/", headers=headers)
            assert page.status_code == 200
            assert f'href="/dashboard/queues/{queue}"' in page.text
            (row,) = (await client.get("/dashboard/api/queues", headers=headers)).json()
            assert (row["name"], row["ready"]) == (queue, 1)

            # ?token= once: a cookie, and the same page without the token in its address.
            login = await client.get(f"/dashboard/?token={TOKEN}")
            assert login.status_code in (302, 303, 307)
            assert login.headers["location"].endswith("/dashboard/")
            assert (await client.get("/dashboard/schedules")).status_code == 200
    assert module.dashboard._tasks == []  # the lifespan stopped its sampling
    assert module.broker.connection is None or module.broker.connection.is_closed
