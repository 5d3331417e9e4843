"""Prometheus metrics: the middleware in a worker, and `aqueue worker --metrics-port` scraped
over HTTP, with one process and with several."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import aqueue
from aqueue.middleware import Middleware, SkipMessage
from aqueue.middleware.prometheus import Prometheus

from .conftest import RABBITMQ_URL, RabbitAdmin, rabbitmqctl

# -- the middleware, in process -----------------------------------------------------------------


class Ignore(Middleware):
    """Skips messages whose first argument is "ignore", without dead-lettering them."""

    async def before_process_message(self, context: aqueue.MessageContext) -> None:
        if context.message.args[:1] == ("ignore",):
            raise SkipMessage("ignored", dead_letter=False)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    sample = registry.get_sample_value(name, labels)
    return 0.0 if sample is None else sample


async def wait_for(predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_middleware_counts_every_outcome(broker: aqueue.Broker, queue_name: str) -> None:
    registry = CollectorRegistry()
    broker.add_middleware(Ignore())
    broker.add_middleware(Prometheus(registry=registry))

    @broker.actor(queue_name=queue_name, max_retries=1, min_backoff=0.01, max_backoff=0.01)
    async def work(kind: str) -> None:
        if kind == "fail":
            raise RuntimeError("failed")

    for _ in range(3):
        await work.send("ok")
    await work.send_with_options(args=("ok",), delay=0.3)
    await work.send("fail")
    await work.send_with_options(args=("old",), max_age=0.001)
    await work.send("ignore")
    # The "old" message must be older than its 1 ms max_age when it runs: on the in-memory
    # broker a worker can reach it within the same millisecond (message_timestamp is in ms).
    await asyncio.sleep(0.01)

    labels = {"queue": queue_name, "actor": "work"}
    async with aqueue.Worker(broker, queues=[queue_name]):
        await wait_for(
            lambda: (
                value(registry, "aqueue_messages_succeeded_total", **labels) == 4
                and value(registry, "aqueue_messages_dead_lettered_total", **labels) == 2
            )
        )
        await broker.join(queue_name, timeout=30)

    expected = {
        # 4 ok, the failing one twice, the old one, the ignored one
        "aqueue_messages_received_total": 8,
        "aqueue_messages_succeeded_total": 4,
        "aqueue_messages_failed_total": 2,
        "aqueue_messages_retried_total": 1,
        # the failing one after its retry, the old one (AgeLimit dead-letters)
        "aqueue_messages_dead_lettered_total": 2,
        "aqueue_messages_skipped_total": 2,
        # the delayed send and the retry
        "aqueue_messages_delayed_total": 2,
        "aqueue_messages_in_progress": 0,
        # the runs that got past the skipping middleware: 4 ok, 2 failed
        "aqueue_message_duration_seconds_count": 6,
        # first attempts only: 4 ok, the first of the failing one
        "aqueue_message_queue_latency_seconds_count": 5,
    }
    assert {name: value(registry, name, **labels) for name in expected} == expected
    assert value(registry, "aqueue_message_queue_latency_seconds_sum", **labels) >= 0.3
    assert value(registry, "aqueue_broker_reconnects_total") == 0


async def test_messages_the_worker_cannot_run_are_counted_as_dead_lettered(
    broker: aqueue.Broker, queue_name: str
) -> None:
    registry = CollectorRegistry()
    broker.add_middleware(Prometheus(registry=registry))
    events = aqueue.middleware.TaskEvents(flush_interval=0.05)
    if isinstance(broker, aqueue.InMemoryBroker):  # on RabbitMQ it would declare its stream
        broker.add_middleware(events)

    @broker.actor(queue_name=queue_name)
    async def known(n: int) -> None: ...

    @broker.actor(queue_name=queue_name)
    async def gone(n: int) -> None: ...

    await known.send(1)
    await gone.send(2)
    await gone.send(3)
    del broker.actors[gone.actor_name]  # a worker deployed without this actor
    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=30)
        if isinstance(broker, aqueue.InMemoryBroker):  # else the events go to a stream
            await wait_for(lambda: sum(len(b.events) for b in events.batches) >= 3, 10)

    unknown = {"queue": queue_name, "actor": "(unknown)"}
    assert value(registry, "aqueue_messages_received_total", **unknown) == 2
    assert value(registry, "aqueue_messages_dead_lettered_total", **unknown) == 2
    assert (
        value(registry, "aqueue_messages_dead_lettered_total", queue=queue_name, actor="known") == 0
    )
    if not isinstance(broker, aqueue.InMemoryBroker):
        return
    found = sorted(
        (e.actor, e.outcome, e.exception) for batch in events.batches for e in batch.events
    )
    assert found == [
        ("gone", "failed", "ActorNotFound"),
        ("gone", "failed", "ActorNotFound"),
        ("known", "succeeded", None),
    ]


async def test_in_progress_gauge_follows_running_messages(
    broker: aqueue.Broker, queue_name: str
) -> None:
    registry = CollectorRegistry()
    broker.add_middleware(Prometheus(registry=registry))
    release = asyncio.Event()

    @broker.actor(queue_name=queue_name)
    async def hold(n: int) -> None:
        await release.wait()

    for n in range(3):
        await hold.send(n)
    labels = {"queue": queue_name, "actor": "hold"}
    async with aqueue.Worker(broker, queues=[queue_name]) as worker:
        await wait_for(lambda: value(registry, "aqueue_messages_in_progress", **labels) == 3)
        release.set()
        await broker.join(queue_name, timeout=30)
        assert value(registry, "aqueue_messages_in_progress", **labels) == 0

        # Cancelled at shutdown (no after-hook runs): the gauge still goes down.
        release.clear()
        await hold.send(4)
        await wait_for(lambda: value(registry, "aqueue_messages_in_progress", **labels) == 1)
        await worker.stop(timeout=0.1)
    assert value(registry, "aqueue_messages_in_progress", **labels) == 0
    assert value(registry, "aqueue_message_duration_seconds_count", **labels) == 3


async def test_reconnects_are_counted(
    rabbitmq_broker: aqueue.RabbitmqBroker, queue_name: str
) -> None:
    broker = rabbitmq_broker
    registry = CollectorRegistry()
    broker.add_middleware(Prometheus(registry=registry))

    @broker.actor(queue_name=queue_name)
    async def noop() -> None:
        pass

    async with aqueue.Worker(broker, queues=[queue_name]):
        name = f"aqueue consume {socket.gethostname()} pid {os.getpid()}"
        listing = await asyncio.to_thread(
            rabbitmqctl, "list_connections", "pid", "client_properties"
        )
        pids = [line.split("\t")[0] for line in listing.splitlines() if name in line]
        assert len(pids) == 1
        await asyncio.to_thread(rabbitmqctl, "close_connection", pids[0], "test reconnect")
        await wait_for(lambda: value(registry, "aqueue_broker_reconnects_total") == 1)
        # Still working after it.
        await noop.send()
        await wait_for(
            lambda: (
                value(registry, "aqueue_messages_succeeded_total", queue=queue_name, actor="noop")
                == 1
            )
        )


def test_prometheus_is_not_imported_by_aqueue() -> None:
    code = "import sys, aqueue, aqueue.cli; print('prometheus_client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- the worker command, scraped over HTTP --------------------------------------------------


APP = """
import asyncio
import os

import aqueue

QUEUE = os.environ["AQUEUE_TEST_QUEUE"]
OUT = os.environ["AQUEUE_TEST_OUT"]
broker = aqueue.RabbitmqBroker()


class Declined(Exception):
    pass


@broker.actor(queue_name=QUEUE, throws=Declined)
async def pay(n: int) -> None:
    if n < 0:
        raise Declined(str(n))


@broker.actor(queue_name=QUEUE, concurrency=1)
async def slow(n: int) -> None:
    await asyncio.sleep(0.2)
    with open(OUT, "a") as f:
        f.write(f"{os.getpid()}\\n")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """The samples served on ``port``, by name and sorted labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


class MetricsWorker:
    def __init__(self, root: Path, queue: str) -> None:
        self.root = root
        self.queue = queue
        self.out = root / "out.txt"
        (root / "metrics_app.py").write_text(textwrap.dedent(APP))
        self.env = {
            **os.environ,
            "AQUEUE_BROKER_URL": RABBITMQ_URL,
            "AQUEUE_TEST_QUEUE": queue,
            "AQUEUE_TEST_OUT": str(self.out),
            "PYTHONPATH": str(root),
        }
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.process: subprocess.Popen[str] | None = None
        self.port = free_port()
        self.output: list[str] = []

    def start(self, *args: str) -> subprocess.Popen[str]:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aqueue",
                "worker",
                "metrics_app",
                "--metrics-port",
                str(self.port),
                "--metrics-host",
                "127.0.0.1",
                *args,
            ],
            cwd=self.root,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        return self.process

    def wait_started(self, count: int = 1) -> None:
        assert self.process is not None and self.process.stdout is not None
        deadline = time.monotonic() + 30
        while sum("worker started" in line for line in self.output) < count:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError("worker did not start:\n" + "".join(self.output))
            self.output.append(self.process.stdout.readline())

    async def send(self, actor: str, *args: Any) -> None:
        broker = aqueue.RabbitmqBroker(RABBITMQ_URL)

        async def placeholder(*a: Any) -> None: ...

        sender = broker.actor(actor_name=actor, queue_name=self.queue)(placeholder)
        try:
            for arg in args:
                await sender.send(arg)
        finally:
            await broker.close()

    async def wait_metric(
        self, name: str, expected: float, timeout: float = 30, **labels: str
    ) -> Samples:
        key = (name, tuple(sorted(labels.items())))
        deadline = time.monotonic() + timeout
        while True:
            samples = await asyncio.to_thread(scrape, self.port)
            if samples.get(key) == expected:
                return samples
            assert time.monotonic() < deadline, (key, samples.get(key), expected)
            await asyncio.sleep(0.1)

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(20)


@pytest.fixture
def metrics_worker(tmp_path: Path, queue_name: str) -> Iterator[MetricsWorker]:
    w = MetricsWorker(tmp_path, queue_name)
    yield w
    if w.process is not None:
        if w.process.poll() is None:
            w.process.kill()
            w.process.wait()
        assert w.process.stdout is not None
        w.process.stdout.close()


async def test_worker_serves_metrics_that_match_what_was_sent(
    metrics_worker: MetricsWorker, rabbit: RabbitAdmin
) -> None:
    metrics_worker.start()
    await asyncio.to_thread(metrics_worker.wait_started)
    await metrics_worker.send("pay", 1, 2, 3, 4, 5, -1, -2)

    labels = {"queue": metrics_worker.queue, "actor": "pay"}
    samples = await metrics_worker.wait_metric("aqueue_messages_received_total", 7, **labels)
    samples = await metrics_worker.wait_metric("aqueue_message_duration_seconds_count", 7, **labels)
    key = tuple(sorted(labels.items()))
    assert samples[("aqueue_messages_succeeded_total", key)] == 5
    assert samples[("aqueue_messages_failed_total", key)] == 2
    assert samples[("aqueue_messages_dead_lettered_total", key)] == 2
    assert samples[("aqueue_messages_retried_total", key)] == 0
    assert samples[("aqueue_messages_in_progress", key)] == 0
    assert samples[("aqueue_message_queue_latency_seconds_count", key)] == 7
    assert samples[("aqueue_broker_reconnects_total", ())] == 0
    assert await rabbit.count(metrics_worker.queue + ".XQ") == 2
    assert await asyncio.to_thread(metrics_worker.stop) == 0


async def test_processes_serve_the_sum_of_all_processes_from_the_parent(
    metrics_worker: MetricsWorker,
) -> None:
    process = metrics_worker.start("--processes", "2")
    await asyncio.to_thread(metrics_worker.wait_started, 2)
    children = await asyncio.to_thread(_children_of, process.pid)
    assert len(children) == 2
    directories = {_environment(child).get("PROMETHEUS_MULTIPROC_DIR") for child in children}
    assert len(directories) == 1
    directory = directories.pop()
    assert directory is not None and Path(directory).is_dir()  # noqa: ASYNC240

    # One at a time per process (concurrency=1, 0.2 s each): both processes get some.
    await metrics_worker.send("slow", *range(12))
    await metrics_worker.send("pay", 1, -1)
    labels = {"queue": metrics_worker.queue, "actor": "slow"}
    samples = await metrics_worker.wait_metric(
        "aqueue_messages_succeeded_total", 12, timeout=60, **labels
    )
    pids = set(metrics_worker.out.read_text().split())
    assert pids == {str(child) for child in children}, "one process did all the work"
    key = tuple(sorted(labels.items()))
    assert samples[("aqueue_messages_received_total", key)] == 12
    assert samples[("aqueue_message_duration_seconds_count", key)] == 12
    samples = await metrics_worker.wait_metric(
        "aqueue_messages_dead_lettered_total", 1, queue=metrics_worker.queue, actor="pay"
    )
    assert samples[("aqueue_messages_in_progress", key)] == 0
    assert all("pid" not in dict(labels) for _, labels in samples)  # summed, not per process

    assert await asyncio.to_thread(metrics_worker.stop) == 0
    assert not Path(directory).exists()  # noqa: ASYNC240


def _children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _environment(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def test_metrics_port_in_use_is_one_line_and_exit_1(
    metrics_worker: MetricsWorker, rabbit: RabbitAdmin
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", metrics_worker.port))
        taken.listen()
        process = metrics_worker.start()
        out, _ = process.communicate(timeout=60)
    assert process.returncode == 1
    last = out.strip().splitlines()[-1]
    assert last.startswith(
        f"aqueue: error: cannot serve metrics on 127.0.0.1:{metrics_worker.port}"
    )
    assert "Traceback" not in out
