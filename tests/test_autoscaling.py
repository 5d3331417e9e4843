"""Autoscaling signals: ``aqueue queues --unacked`` and ``aqueue worker --prefetch-exact``.

Against the real RabbitMQ. Its management plugin may be off: the unacknowledged counts are
then checked through a stand-in for the management API's queue endpoint that answers with
the node's own figures (from rabbitmqctl), so the HTTP client, its credentials and the JSON
contract are exercised end to end.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import aqueue
from aqueue._plans import plan_queues
from aqueue.brokers.rabbitmq.management import ManagementApi

from .conftest import RABBITMQ_URL, RabbitAdmin, rabbitmqctl

QUEUE_KEYS_WITH_UNACKED = [
    "queue",
    "exists",
    "ready",
    "unacknowledged",
    "consumers",
    "dead_letter_queue",
    "dead_letters",
    "unacknowledged_unavailable",
]


async def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AQUEUE_BROKER_URL": RABBITMQ_URL}
    env.pop("AQUEUE_MANAGEMENT_URL", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aqueue",
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return subprocess.CompletedProcess(args, process.returncode, out.decode(), err.decode())


def node_counts(queue_name: str) -> tuple[int, int, int] | None:
    """(ready, unacknowledged, consumers) of a queue, as the node counts them."""
    out = rabbitmqctl(
        "list_queues", "name", "messages_ready", "messages_unacknowledged", "consumers"
    )
    for line in out.splitlines():
        name, *counts = line.split("\t")
        if name == queue_name:
            ready, unacked, consumers = (int(c) for c in counts)
            return ready, unacked, consumers
    return None


def management_port_open() -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", 15672)) == 0


class StandInManagementApi:
    """``GET /api/queues/<vhost>/<queue>`` answered with the node's figures; guest only."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        expected = "Basic " + base64.b64encode(b"guest:guest").decode()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.path)
                if self.headers.get("Authorization") != expected:
                    self.send_error(401)
                    return
                parts = self.path.split("?")[0].split("/")
                if len(parts) != 5 or parts[1:3] != ["api", "queues"] or parts[3] != "%2F":
                    self.send_error(404)
                    return
                name = urllib.parse.unquote(parts[4])
                counts = node_counts(name)
                if counts is None:
                    self.send_error(404)
                    return
                body = json.dumps(
                    {
                        "name": name,
                        "vhost": "/",
                        "messages_ready": counts[0],
                        "messages_unacknowledged": counts[1],
                        "messages": counts[0] + counts[1],
                        "consumers": counts[2],
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def management() -> Iterator[StandInManagementApi]:
    api = StandInManagementApi()
    try:
        yield api
    finally:
        api.close()


async def fill(broker: aqueue.RabbitmqBroker, actor: Any, count: int) -> None:
    for n in range(count):
        await actor.send(n)


# -- aqueue queues --unacked ------------------------------------------------------------------


async def test_queues_json_reports_ready_and_says_when_unacknowledged_is_unavailable(
    rabbitmq_broker: aqueue.RabbitmqBroker, queue_name: str
) -> None:
    @rabbitmq_broker.actor(queue_name=queue_name)
    async def work(n: int) -> None:
        pass

    await fill(rabbitmq_broker, work, 7)
    result = await run_cli("queues", queue_name, "--unacked", "--json")
    assert result.returncode == 0, result.stderr
    [row] = json.loads(result.stdout)
    assert list(row) == QUEUE_KEYS_WITH_UNACKED
    assert row["ready"] == 7
    assert row["consumers"] == 0
    if await asyncio.to_thread(management_port_open):  # the node's plugin is on
        assert row["unacknowledged"] == 0
        assert row["unacknowledged_unavailable"] is None
    else:
        assert row["unacknowledged"] is None
        assert row["unacknowledged_unavailable"] == (
            "management API unavailable (http://127.0.0.1:15672/: connection refused)"
        )
        table = await run_cli("queues", queue_name, "--unacked")
        assert table.stdout.splitlines()[1].split() == [queue_name, "7", "-", "0", "0"]
        assert "unacknowledged counts unavailable" in table.stderr


async def test_queues_json_counts_what_workers_hold_from_the_management_api(
    rabbitmq_broker: aqueue.RabbitmqBroker,
    queue_name: str,
    make_queue_name: Any,
    management: StandInManagementApi,
) -> None:
    release = asyncio.Event()

    @rabbitmq_broker.actor(queue_name=queue_name, concurrency=3)
    async def slow(n: int) -> None:
        await release.wait()

    await fill(rabbitmq_broker, slow, 10)
    missing = make_queue_name()
    async with aqueue.Worker(rabbitmq_broker, queues=[queue_name], shutdown_timeout=5):
        deadline = time.monotonic() + 20
        while await asyncio.to_thread(node_counts, queue_name) != (7, 3, 1):
            assert time.monotonic() < deadline, await asyncio.to_thread(node_counts, queue_name)
            await asyncio.sleep(0.2)
        args = ("queues", queue_name, missing, "--unacked", "--management-url", management.url)
        result = await run_cli(*args, "--json")
        table = await run_cli(*args)
        release.set()
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        {
            "queue": queue_name,
            "exists": True,
            "ready": 7,
            "unacknowledged": 3,
            "consumers": 1,
            "dead_letter_queue": queue_name + ".XQ",
            "dead_letters": 0,
            "unacknowledged_unavailable": None,
        },
        {
            "queue": missing,
            "exists": False,
            "ready": None,
            "unacknowledged": None,
            "consumers": None,
            "dead_letter_queue": missing + ".XQ",
            "dead_letters": None,
            "unacknowledged_unavailable": None,
        },
    ]
    assert management.requests[0].startswith(f"/api/queues/%2F/{queue_name}")
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["QUEUE", "READY", "UNACKED", "CONSUMERS", "DEAD", "LETTERS"]
    assert lines[1].split() == [queue_name, "7", "3", "1", "0"]
    assert table.stderr == ""


async def test_refused_management_credentials_are_stated_not_fatal(
    rabbitmq_broker: aqueue.RabbitmqBroker, queue_name: str, management: StandInManagementApi
) -> None:
    await rabbitmq_broker.declare_queue(queue_name)
    wrong = management.url.replace("http://", "http://guest:wrong@")
    result = await run_cli("queues", queue_name, "--unacked", "--json", "--management-url", wrong)
    assert result.returncode == 0, result.stderr
    [row] = json.loads(result.stdout)
    assert row["ready"] == 0 and row["unacknowledged"] is None
    assert row["unacknowledged_unavailable"] == (
        f"management API unavailable ({management.url}: refused the credentials)"
    )
    assert "wrong" not in result.stdout


def test_the_management_api_is_found_beside_each_broker_url() -> None:
    api = ManagementApi.for_broker(
        ["amqp://u:p@rabbit-1:5672/orders", "amqps://u:p@rabbit-2:5671/orders"]
    )
    assert api.describe() == "http://rabbit-1:15672/, https://rabbit-2:15671/"
    assert api.vhost == "orders"
    assert ManagementApi.for_broker(["amqp://rabbit/%2F"]).vhost == "/"
    assert ManagementApi.for_broker(["amqp://rabbit"]).vhost == "/"
    proxied = ManagementApi.for_broker(["amqp://u:p@rabbit/"], "https://ops:secret@lb/rabbitmq")
    assert proxied.describe() == "https://lb/rabbitmq/"
    assert "secret" not in repr(proxied)
    with pytest.raises(ValueError, match="management URL"):
        ManagementApi.for_broker(["amqp://rabbit/"], "amqp://rabbit:15672/")


# -- aqueue worker --prefetch-exact -----------------------------------------------------------


def test_prefetch_exact_drops_the_headroom_of_blocking_actors() -> None:
    broker = aqueue.InMemoryBroker()

    @broker.actor(queue_name="blocking")
    def blocking() -> None:
        pass

    @broker.actor(queue_name="async")
    async def non_blocking() -> None:
        pass

    def prefetches(**options: Any) -> dict[str, int]:
        plans = plan_queues(broker, None, concurrency=6, threads=8, **options)
        return {plan.name: plan.prefetch for plan in plans}

    assert prefetches() == {"async": 6, "blocking": 10}
    assert prefetches(prefetch_exact=True) == {"async": 6, "blocking": 8}


APP = """
import os

import aqueue

broker = aqueue.RabbitmqBroker()


@broker.actor(queue_name=os.environ["AQUEUE_TEST_QUEUE"])
def blocking(n: int) -> None:
    pass
"""


def consumer_prefetch(queue_name: str) -> list[int]:
    out = rabbitmqctl("list_consumers", "queue_name", "prefetch_count")
    return [
        int(line.split("\t")[1]) for line in out.splitlines() if line.split("\t")[0] == queue_name
    ]


async def worker_prefetch(root: Path, queue_name: str, *options: str) -> list[int]:
    """The prefetch RabbitMQ shows for ``aqueue worker app --threads 4 OPTIONS``."""
    env = {**os.environ, "AQUEUE_BROKER_URL": RABBITMQ_URL, "AQUEUE_TEST_QUEUE": queue_name}
    env["PYTHONPATH"] = str(root)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aqueue",
        "worker",
        "app",
        "--threads",
        "4",
        *options,
        cwd=root,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not (found := await asyncio.to_thread(consumer_prefetch, queue_name)):
            assert process.returncode is None, "the worker exited"
            assert time.monotonic() < deadline, "no consumer on the queue"
            await asyncio.sleep(0.3)
        return found
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, err.decode()


async def test_prefetch_exact_is_what_rabbitmq_sees(
    tmp_path: Path, queue_name: str, rabbit: RabbitAdmin
) -> None:
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))
    # A blocking actor on the default concurrency: --threads 4, plus a quarter as headroom.
    assert await worker_prefetch(tmp_path, queue_name) == [5]
    assert await worker_prefetch(tmp_path, queue_name, "--prefetch-exact") == [4]
