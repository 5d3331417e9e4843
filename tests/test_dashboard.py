"""The dashboard against the real RabbitMQ: pages, the JSON API, token, CSRF, replay and purge."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import msgspec
import pytest
from click.testing import CliRunner

import aqueue
from aqueue.cli import main
from aqueue.dashboard._app import Dashboard
from aqueue.middleware import TaskEvents
from aqueue.middleware.events import EventPublishing

from .conftest import RABBITMQ_URL, RabbitAdmin

EVIL = "<script>alert('x')</script><b>bold</b>"


class Boom(Exception):
    pass


class App:
    """A broker with two actors on a queue of the test's own, and what they were called with."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.broker = aqueue.RabbitmqBroker(RABBITMQ_URL)
        self.calls: list[int] = []
        self.fail = True

        @self.broker.actor(queue_name=queue, max_retries=0)
        async def charge(n: int) -> None:
            self.calls.append(n)
            if self.fail:
                raise Boom(f"card {n} declined {EVIL}")

        @self.broker.actor(queue_name=queue, max_retries=0)
        async def refund(n: int) -> None:
            self.calls.append(-n)
            if self.fail:
                raise ValueError("no refund")

        self.charge = charge
        self.refund = refund

    async def dead_letters(self, count: int) -> None:
        """Run a worker until ``count`` dead letters wait."""
        async with aqueue.Worker(self.broker, queues=[self.queue]):
            deadline = time.monotonic() + 20
            while (await self.broker.queue_info(self.queue + ".XQ") or _Zero()).ready < count:
                assert time.monotonic() < deadline, "dead letters did not arrive"
                await asyncio.sleep(0.05)


class _Zero:
    ready = 0


@pytest.fixture
async def app(queue_name: str) -> AsyncIterator[App]:
    made = App(queue_name)
    try:
        yield made
    finally:
        await made.broker.close()


def client_of(dashboard: Any, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=dashboard),
        base_url="http://127.0.0.1:8000",
        headers=headers,
    )


@pytest.fixture
async def make_dashboard() -> AsyncIterator[Callable[..., Dashboard]]:
    made: list[Dashboard] = []

    def make(broker: aqueue.Broker, **options: Any) -> Dashboard:
        dashboard = Dashboard(broker, **options)
        made.append(dashboard)
        return dashboard

    yield make
    for dashboard in made:
        await dashboard.close()


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page)
    assert match is not None
    return match.group(1)


# -- pages and API ----------------------------------------------------------------------------


async def test_overview_and_api_show_every_queue_with_its_counts(
    app: App, make_dashboard: Callable[..., Dashboard]
) -> None:
    await app.charge.send(1)
    await app.dead_letters(1)
    await app.refund.send(2)  # no worker now: it waits, ready
    dashboard = make_dashboard(app.broker, management_url="http://127.0.0.1:1/")
    async with client_of(dashboard) as client:
        page = await client.get("/")
        assert page.status_code == 200
        assert f'href="/queues/{app.queue}"' in page.text
        assert "charge, refund" in page.text
        assert "Unacked counts unavailable" in page.text  # no management API on this node
        api = (await client.get("/api/queues")).json()
    (row,) = api
    assert (row["name"], row["ready"], row["consumers"], row["dead_letters"]) == (
        app.queue,
        1,
        0,
        1,
    )
    assert row["unacknowledged"] is None and row["samples"]


async def test_queue_page_shows_dead_letters_escaped_with_their_traceback(
    app: App, make_dashboard: Callable[..., Dashboard]
) -> None:
    await app.charge.send(7)
    await app.dead_letters(1)
    async with client_of(make_dashboard(app.broker)) as client:
        page = (await client.get(f"/queues/{app.queue}")).text
        (letter,) = (await client.get(f"/api/queues/{app.queue}/dead-letters")).json()
    assert "Boom" in page and "card 7 declined" in page
    assert "<script>alert" not in page and "<b>bold</b>" not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    assert "<summary>traceback</summary>" in page and "raise Boom" in page
    assert letter["actor_name"] == "charge" and letter["reason"] == "failed"
    assert letter["exception"] == "Boom" and EVIL in letter["error"]
    assert letter["message_id"] and letter["args"] == [7]
    missing = await client_of(make_dashboard(app.broker)).get("/queues/not-this-one")
    assert missing.status_code == 404


async def test_replay_from_the_page_sends_the_letter_back_and_the_actor_runs_it(
    app: App, make_dashboard: Callable[..., Dashboard]
) -> None:
    await app.charge.send(1)
    await app.charge.send(2)
    await app.dead_letters(2)
    letters = await app.broker.dead_letters(app.queue)
    one = next(
        letter for letter in letters if letter.message is not None and letter.message.args == (2,)
    )
    app.fail, app.calls = False, []
    async with client_of(make_dashboard(app.broker)) as client:
        csrf = csrf_of((await client.get(f"/queues/{app.queue}")).text)
        response = await client.post(
            f"/queues/{app.queue}/replay", data={"csrf": csrf, "one": one.message_id or ""}
        )
        assert response.status_code == 303
        assert response.headers["location"] == f"/queues/{app.queue}?replayed=1"
        page = (await client.get(response.headers["location"])).text
    assert "Replayed 1 dead letter." in page
    assert (await app.broker.queue_info(app.queue + ".XQ") or _Zero()).ready == 1
    async with aqueue.Worker(app.broker, queues=[app.queue]):
        await app.broker.join(app.queue, timeout=20)
    assert app.calls == [2]


async def test_api_replays_and_purges_by_filter_and_by_id(
    app: App, make_dashboard: Callable[..., Dashboard], rabbit: RabbitAdmin
) -> None:
    for n in (1, 2, 3):
        await app.charge.send(n)
    await app.refund.send(4)
    await app.dead_letters(4)
    async with client_of(make_dashboard(app.broker)) as client:
        csrf = (await client.get("/api/csrf")).json()["csrf_token"]
        headers = {"X-CSRF-Token": csrf}
        refunds = await client.get(f"/api/queues/{app.queue}/dead-letters?actor=refund")
        assert [letter["args"] for letter in refunds.json()] == [[4]]
        replayed = await client.post(
            f"/api/queues/{app.queue}/dead-letters/replay",
            json={"actor": "refund", "reason": "failed"},
            headers=headers,
        )
        assert replayed.json() == {"replayed": 1}
        charges = (await client.get(f"/api/queues/{app.queue}/dead-letters")).json()
        first = charges[0]["message_id"]
        purged = await client.post(
            f"/api/queues/{app.queue}/dead-letters/purge",
            json={"message_ids": [first]},
            headers=headers,
        )
        assert purged.json() == {"purged": 1}
        too_young = await client.post(
            f"/api/queues/{app.queue}/dead-letters/purge",
            json={"older_than": "1h"},
            headers=headers,
        )
        assert too_young.json() == {"purged": 0}
        bad = await client.post(
            f"/api/queues/{app.queue}/dead-letters/purge",
            json={"older_than": "soon"},
            headers=headers,
        )
        assert bad.status_code == 400
        everything = await client.post(
            f"/api/queues/{app.queue}/dead-letters/purge", headers=headers
        )
        assert everything.json() == {"purged": 2}
    assert await rabbit.count(app.queue + ".XQ") == 0
    assert await rabbit.count(app.queue) == 1  # the replayed refund


# -- security ---------------------------------------------------------------------------------


async def test_with_a_token_every_request_needs_it(
    app: App, make_dashboard: Callable[..., Dashboard]
) -> None:
    dashboard = make_dashboard(app.broker, token="s3cret")
    async with client_of(dashboard) as client:
        assert (await client.get("/api/queues")).status_code == 401
        login = await client.get("/")
        assert login.status_code == 401 and 'name="token"' in login.text
        assert app.queue not in login.text
        assert (
            await client.get("/api/queues", headers={"Authorization": "Bearer nope"})
        ).status_code == 401
        ok = await client.get("/api/queues", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert (await client.get("/static/dashboard.css")).status_code == 200
        # ?token= once: a cookie, and the token leaves the address bar.
        link = await client.get(f"/queues/{app.queue}?token=s3cret&actor=charge")
        assert link.status_code == 303
        assert link.headers["location"] == f"/queues/{app.queue}?actor=charge"
        cookie = link.headers["set-cookie"]
        assert "s3cret" not in cookie
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert (await client.get(link.headers["location"])).status_code == 200
        assert (await client.get("/api/queues")).status_code == 200
    async with client_of(dashboard) as client:
        wrong = await client.post("/login", data={"token": "guess", "next": "/"})
        assert wrong.status_code == 401 and "wrong token" in wrong.text
        right = await client.post("/login", data={"token": "s3cret", "next": "//evil.example/"})
        assert right.status_code == 303 and right.headers["location"] == "/"
        assert (await client.get("/")).status_code == 200


async def test_state_changes_need_the_csrf_token_and_the_same_origin(
    app: App, make_dashboard: Callable[..., Dashboard], rabbit: RabbitAdmin
) -> None:
    await app.charge.send(1)
    await app.dead_letters(1)
    replay = f"/api/queues/{app.queue}/dead-letters/replay"
    form = f"/queues/{app.queue}/purge"
    async with client_of(make_dashboard(app.broker, token="s3cret")) as client:
        await client.get("/?token=s3cret")  # a browser session: the cookie alone
        csrf = csrf_of((await client.get("/")).text)
        assert (await client.post(replay)).status_code == 403
        assert (await client.post(replay, headers={"X-CSRF-Token": "0" * 64})).status_code == 403
        assert (await client.post(form, data={"scope": "matching"})).status_code == 403
        cross = {"Origin": "https://evil.example", "X-CSRF-Token": csrf}
        assert (await client.post(replay, headers=cross)).status_code == 403
        fetched = {"Sec-Fetch-Site": "cross-site", "X-CSRF-Token": csrf}
        assert (await client.post(replay, headers=fetched)).status_code == 403
        assert await rabbit.count(app.queue + ".XQ") == 1
        same = {"Origin": "http://127.0.0.1:8000", "X-CSRF-Token": csrf}
        assert (await client.post(replay, headers=same)).json() == {"replayed": 1}
    async with client_of(make_dashboard(app.broker, token="s3cret")) as script:
        bearer = {"Authorization": "Bearer s3cret"}  # a script: no CSRF token needed
        assert (await script.post(replay, headers=bearer)).json() == {"replayed": 0}


async def test_host_header_is_checked_when_hosts_are_given(
    app: App, make_dashboard: Callable[..., Dashboard]
) -> None:
    dashboard = make_dashboard(app.broker, allowed_hosts=["127.0.0.1", "localhost"])
    async with client_of(dashboard) as client:
        assert (await client.get("/api/queues")).status_code == 200
        rebound = await client.get("/api/queues", headers={"Host": "attacker.example:8000"})
        assert rebound.status_code == 400


def test_the_command_refuses_to_listen_beyond_loopback_without_a_token() -> None:
    result = CliRunner().invoke(main, ["dashboard", "nosuchmodule", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "refusing to listen on 0.0.0.0 without a token" in result.output
    result = CliRunner().invoke(
        main,
        ["dashboard", "nosuchmodule", "--host", "0.0.0.0"],
        env={"AQUEUE_DASHBOARD_TOKEN": "t"},
    )
    assert result.exit_code == 2 and "cannot import 'nosuchmodule'" in result.output


async def test_mounted_in_fastapi_its_links_are_below_the_mount_point(
    app: App, make_dashboard: Callable[..., Dashboard]
) -> None:
    from fastapi import FastAPI

    outer = FastAPI()
    outer.mount("/dashboard", aqueue.dashboard.app(app.broker, token="s3cret"))
    async with client_of(outer, Authorization="Bearer s3cret") as client:
        page = await client.get("/dashboard/")
        assert page.status_code == 200
        assert f'href="/dashboard/queues/{app.queue}"' in page.text
        assert 'href="/dashboard/static/dashboard.css"' in page.text
        assert (await client.get("/dashboard/api/queues")).status_code == 200
        assert (await client.get("/dashboard/static/dashboard.js")).status_code == 200
    await outer.routes[-1].app.close()  # type: ignore[attr-defined]


# -- workers ----------------------------------------------------------------------------------


async def test_workers_page_says_what_it_cannot_show_without_the_management_api(
    app: App, make_dashboard: Callable[..., Dashboard]
) -> None:
    dashboard = make_dashboard(app.broker, management_url="http://127.0.0.1:1/")
    async with client_of(dashboard) as client:
        page = (await client.get("/workers")).text
        api = (await client.get("/api/workers")).json()
    assert "Unavailable: management API unavailable" in page
    assert "not which processes they are" in page
    assert api["from_management_api"] == [] and "unavailable" in api["management_api_unavailable"]


def test_workers_are_grouped_by_process_from_the_management_api() -> None:
    from aqueue.dashboard._workers import group, parse_connection_name

    assert parse_connection_name("aqueue consume web-1 pid 42") == ("consume", "web-1", 42)
    assert parse_connection_name("someone else") is None
    connections = [
        {"name": "a -> b", "user_provided_name": "aqueue consume h1 pid 7", "connected_at": 2000},
        {
            "name": "c -> b",
            "client_properties": {"connection_name": "aqueue publish h1 pid 7"},
            "connected_at": 1000,
            "peer_host": "10.0.0.5",
        },
        {"name": "d -> b", "client_properties": {"connection_name": "celery"}},
    ]
    consumers = [
        {
            "queue": {"name": "emails"},
            "channel_details": {"connection_name": "a -> b"},
            "prefetch_count": 10,
            "active": True,
        },
        {
            "queue": {"name": "alerts"},
            "channel_details": {"connection_name": "a -> b"},
            "prefetch_count": 1,
        },
        {"queue": {"name": "other"}, "channel_details": {"connection_name": "d -> b"}},
    ]
    (process,) = group(connections, consumers)
    assert (process.host, process.pid, process.roles) == ("h1", 7, ["consume", "publish"])
    assert process.connected_at == 1.0 and process.peer == "10.0.0.5"
    assert [(q.queue, q.prefetch) for q in process.queues] == [("alerts", 1), ("emails", 10)]


# -- history ----------------------------------------------------------------------------------


async def test_an_event_published_twice_is_counted_once(
    app: App, make_dashboard: Callable[..., Dashboard], rabbit: RabbitAdmin
) -> None:
    """Events are at least once (a batch whose confirm was lost is sent again)."""
    from aqueue.middleware.events import Batch, Event

    stream = f"{app.queue}.events"
    now = time.time()
    first = Event(outcome="succeeded", actor="charge", queue=app.queue, message_id="m1", at=now)
    second = Event(outcome="failed", actor="refund", queue=app.queue, message_id="m2", at=now)
    batch = Batch(host="h", pid=7, at=now, events=[first])
    again = Batch(host="h", pid=7, at=now + 1, events=[first, second])  # kept, then more
    try:
        for body in (batch, again):
            await app.broker.publish_events(
                stream, msgspec.json.encode(body), max_age="1h", max_bytes=1_000_000
            )
        dashboard = make_dashboard(app.broker, events_stream=stream)
        async with client_of(dashboard) as client:
            await client.get("/")
            await asyncio.wait_for(dashboard.history.loaded.wait(), 10)
            deadline = time.monotonic() + 10
            while len(dashboard.history.events) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            history = (await client.get("/api/history")).json()
        outcomes = sorted((e["message_id"], e["outcome"]) for e in history["events"])
        assert outcomes == [("m1", "succeeded"), ("m2", "failed")]
        [process] = dashboard.history.processes()
        assert process.events == 2
    finally:
        await rabbit.delete(stream)


async def test_history_from_the_events_stream_survives_a_dashboard_restart(
    app: App, make_dashboard: Callable[..., Dashboard], rabbit: RabbitAdmin
) -> None:
    stream = f"{app.queue}.events"
    assert isinstance(app.broker, EventPublishing)
    app.broker.add_middleware(TaskEvents(stream, flush_interval=0.05))
    app.fail = False
    try:
        await app.charge.send(1)
        await app.charge.send(2)
        async with aqueue.Worker(app.broker, queues=[app.queue]):
            await app.broker.join(app.queue, timeout=20)
            app.fail = True
            await app.refund.send(3)
            await app.broker.join(app.queue, timeout=20)
        for _ in range(2):  # the second dashboard reads the same history: a restart
            dashboard = make_dashboard(app.broker, events_stream=stream)
            async with client_of(dashboard) as client:
                await client.get("/")
                await asyncio.wait_for(dashboard.history.loaded.wait(), 10)
                deadline = time.monotonic() + 10
                while len(dashboard.history.events) < 3 and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                history = (await client.get("/api/history")).json()
                page = (await client.get("/history")).text
                workers = (await client.get("/workers")).text
            await dashboard.close()
            outcomes = sorted((e["actor"], e["outcome"]) for e in history["events"])
            assert outcomes == [
                ("charge", "succeeded"),
                ("charge", "succeeded"),
                ("refund", "failed"),
            ]
            stats = {s["actor"]: s for s in history["stats"]}
            assert stats["charge"]["succeeded"] == 2 and stats["refund"]["failed"] == 1
            assert stats["charge"]["mean_duration"] is not None
            assert "no refund" in page and "ValueError" in page
            assert f"pid {0}" not in workers and str(__import__("os").getpid()) in workers
    finally:
        await rabbit.delete(stream)
