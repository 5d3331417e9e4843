"""A worker that consumes nothing it should never looks healthy: the ``queue_consuming``
metric and ``aqueue check`` show it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

import aqueue
from aqueue.cli import EXIT_RUNTIME_ERROR
from aqueue.middleware.prometheus import Prometheus

from ._proxy import FaultProxy
from .conftest import RABBITMQ_URL

CONSUMING = "aqueue_queue_consuming"


async def wait_for(predicate: Callable[[], bool], timeout: float = 15) -> float:
    """Seconds it took until ``predicate()`` held; fails after ``timeout``."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, "timed out"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


# -- the metric -------------------------------------------------------------------------------


async def test_consuming_gauge_follows_the_subscription(queue_name: str) -> None:
    proxy = await FaultProxy("127.0.0.1", 5672).start()
    broker = aqueue.RabbitmqBroker(proxy.url(), reconnect_interval=0.2)
    registry = CollectorRegistry()
    broker.add_middleware(Prometheus(registry=registry))

    @broker.actor(queue_name=queue_name)
    async def work() -> None:
        pass

    def consuming() -> float | None:
        return registry.get_sample_value(CONSUMING, {"queue": queue_name})

    try:
        worker = aqueue.Worker(broker, queues=[queue_name])
        async with worker:
            assert consuming() == 1.0  # set at boot
            assert worker.consuming_queues == {queue_name: True}

            proxy.refusing = True
            proxy.reset()  # the worker is disconnected and cannot connect again
            assert await wait_for(lambda: consuming() == 0.0) < 5
            assert worker.consuming_queues == {queue_name: False}
            await asyncio.sleep(1.5)  # stays down while it cannot subscribe
            assert consuming() == 0.0

            proxy.refusing = False
            await wait_for(lambda: consuming() == 1.0)
            assert worker.consuming_queues == {queue_name: True}

            # And it really consumes again.
            await work.send()
            await broker.join(queue_name, timeout=15)
        assert consuming() == 0.0  # a stopped worker consumes nothing
        assert worker.consuming_queues == {}
    finally:
        await broker.close()
        await proxy.close()


async def test_consuming_gauge_of_an_in_memory_worker() -> None:
    broker = aqueue.InMemoryBroker()
    registry = CollectorRegistry()
    broker.add_middleware(Prometheus(registry=registry, consuming_interval=0.1))

    @broker.actor(queue_name="health")
    async def work() -> None:
        pass

    async with aqueue.Worker(broker):
        assert registry.get_sample_value(CONSUMING, {"queue": "health"}) == 1.0
    assert registry.get_sample_value(CONSUMING, {"queue": "health"}) == 0.0


def test_consuming_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="consuming_interval"):
        Prometheus(registry=CollectorRegistry(), consuming_interval=0)


# -- aqueue check -----------------------------------------------------------------------------

APP = """
import os

import aqueue

broker = aqueue.RabbitmqBroker()


@broker.actor(queue_name=os.environ["AQUEUE_TEST_QUEUE"])
async def work() -> None:
    pass
"""


async def run_check(root: Path, queue: str, *args: str) -> subprocess.CompletedProcess[str]:
    (root / "app.py").write_text(textwrap.dedent(APP))
    env = {
        **os.environ,
        "AQUEUE_BROKER_URL": RABBITMQ_URL,
        "AQUEUE_TEST_QUEUE": queue,
        "PYTHONPATH": str(root),
    }
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "aqueue", "check", *args],
        cwd=root,
        env=env,
        input="",
        capture_output=True,
        text=True,
        timeout=90,
    )


async def test_check_fails_while_no_worker_consumes_a_queue(
    tmp_path: Path, queue_name: str
) -> None:
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL)

    @broker.actor(queue_name=queue_name)
    async def work() -> None:
        pass

    try:
        await broker.declare_queue(queue_name)  # the topology is in place, nobody consumes

        result = await run_check(tmp_path, queue_name, "--broker", "app")
        assert result.returncode == EXIT_RUNTIME_ERROR, result
        assert result.stdout == ""
        assert result.stderr.strip().splitlines() == [
            f"aqueue: error: no worker consumes queue {queue_name!r} "
            "(0 consumers; --no-consumers checks the topology only)"
        ]
        # A queue named on the command line too.
        result = await run_check(tmp_path, queue_name, queue_name)
        assert result.returncode == EXIT_RUNTIME_ERROR
        assert f"no worker consumes queue {queue_name!r}" in result.stderr
        # The topology alone is fine.
        result = await run_check(tmp_path, queue_name, "--broker", "app", "--no-consumers")
        assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr
        assert (await run_check(tmp_path, queue_name, queue_name, "--no-consumers")).returncode == 0

        async with aqueue.Worker(broker, queues=[queue_name]):
            result = await run_check(tmp_path, queue_name, "--broker", "app")
            assert (result.returncode, result.stdout, result.stderr) == (0, "ok\n", "")
            assert (await run_check(tmp_path, queue_name, queue_name)).returncode == 0

        result = await run_check(tmp_path, queue_name, "--broker", "app")
        assert result.returncode == EXIT_RUNTIME_ERROR
        assert "no worker consumes queue" in result.stderr
    finally:
        await broker.close()


async def test_check_names_every_queue_without_a_consumer(
    tmp_path: Path, make_queue_name: Callable[[], str]
) -> None:
    first, second = sorted([make_queue_name(), make_queue_name()])
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL)
    try:
        for queue in (first, second):
            await broker.declare_queue(queue)
        result = await run_check(tmp_path, first, first, second)
        assert result.returncode == EXIT_RUNTIME_ERROR
        assert f"no worker consumes queues {first!r}, {second!r}" in result.stderr
    finally:
        await broker.close()
