"""Faults: killed workers, poison messages, channel errors, broker restarts. Nothing is lost."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import aqueue

from .conftest import RABBITMQ_URL, rabbitmqctl, restart_rabbitmq, unique_name

CRASHY_MODULE = """
import asyncio
import os

import aqueue

QUEUE = os.environ["FAULT_QUEUE"]
OUT = os.environ["FAULT_OUT"]
broker = aqueue.RabbitmqBroker()


def record(text: str) -> None:
    with open(OUT, "a") as f:
        f.write(text + "\\n")


@broker.actor(queue_name=QUEUE, max_redeliveries=2)
async def poison() -> None:
    record("poison started")
    os._exit(1)  # dies every time, before any ack


@broker.actor(queue_name=QUEUE, concurrency=20)
async def work(n: int) -> None:
    await asyncio.sleep(0.005)
    record(f"work {n}")
"""


@pytest.fixture
def fault_project(tmp_path: Path, queue_name: str) -> tuple[Path, dict[str, str]]:
    (tmp_path / "faulty.py").write_text(textwrap.dedent(CRASHY_MODULE))
    env = {
        **os.environ,
        "AQUEUE_BROKER_URL": RABBITMQ_URL,
        "FAULT_QUEUE": queue_name,
        "FAULT_OUT": str(tmp_path / "out.txt"),
        "PYTHONPATH": str(tmp_path),
    }
    return tmp_path, env


def _start_worker(root: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "aqueue", "worker", "faulty", "--log-level", "warning"],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _records(root: Path) -> list[str]:
    path = root / "out.txt"
    return path.read_text().splitlines() if path.exists() else []


def _send(*calls: tuple[str, tuple[object, ...]]) -> None:
    async def main() -> None:
        broker = aqueue.RabbitmqBroker(RABBITMQ_URL)
        queue = os.environ["FAULT_QUEUE"]

        async def placeholder(*args: object) -> None: ...

        actors = {
            name: broker.actor(actor_name=name, queue_name=queue)(placeholder)
            for name in {c[0] for c in calls}
        }
        try:
            await asyncio.gather(*(actors[name].send(*args) for name, args in calls))
        finally:
            await broker.close()

    asyncio.run(main())


@pytest.mark.slow
def test_poison_message_that_kills_its_worker_ends_in_the_dead_letter_queue(
    fault_project: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, env = fault_project
    monkeypatch.setenv("FAULT_QUEUE", env["FAULT_QUEUE"])
    _send(("poison", ()))
    crashes = 0
    deadline = time.monotonic() + 90
    while True:
        assert time.monotonic() < deadline, _records(root)
        worker = _start_worker(root, env)  # like a process manager restarting it
        # Alive after the longest redelivery wait: the poison message is gone.
        settle = time.monotonic() + 9
        while worker.poll() is None and time.monotonic() < settle:
            time.sleep(0.05)
        if worker.poll() is None:
            break
        assert worker.returncode == 1
        crashes += 1
    _send(("work", (1,)))
    while "work 1" not in _records(root):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    # max_redeliveries=2: the first run and two redeliveries crash, the third is dead-lettered.
    assert crashes == 3
    assert _records(root).count("poison started") == 3

    async def check() -> None:
        broker = aqueue.RabbitmqBroker(RABBITMQ_URL)
        try:
            [letter] = await broker.dead_letters(env["FAULT_QUEUE"])
            assert letter.reason == "redelivery-limit"
            assert letter.actor_name == "poison"
            assert letter.headers["x-aqueue-redeliveries"] == "3"
            assert await broker.ready_count(env["FAULT_QUEUE"]) == 0
        finally:
            await broker.close()

    asyncio.run(check())


@pytest.mark.slow
def test_sigkilled_worker_loses_nothing(
    fault_project: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, env = fault_project
    monkeypatch.setenv("FAULT_QUEUE", env["FAULT_QUEUE"])
    total = 2000
    _send(*(("work", (i,)) for i in range(total)))
    victim = _start_worker(root, env)
    survivor = None
    try:
        deadline = time.monotonic() + 60
        while len(_records(root)) < total // 4:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        survivor = _start_worker(root, env)
        while len({r for r in _records(root)}) < total:
            assert time.monotonic() < deadline, len(set(_records(root)))
            time.sleep(0.05)
    finally:
        for process in (victim, survivor):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(20)
    done = _records(root)
    assert {f"work {i}" for i in range(total)} == set(done)  # none lost
    # Up to a prefetch window (20) of unacked messages ran twice: at-least-once.
    assert len(done) - total <= 20


async def test_channel_error_on_one_queue_leaves_the_others_alone(
    rabbitmq_broker: aqueue.RabbitmqBroker, make_queue_name: object
) -> None:
    broker = rabbitmq_broker
    broken_queue, calm_queue = make_queue_name(), make_queue_name()  # type: ignore[operator]
    done: list[str] = []

    @broker.actor(queue_name=broken_queue)
    async def on_broken(n: int) -> None:
        done.append(f"broken {n}")

    @broker.actor(queue_name=calm_queue)
    async def on_calm(n: int) -> None:
        done.append(f"calm {n}")

    worker = aqueue.Worker(broker)
    async with worker:
        await on_broken.send(1)
        await on_calm.send(1)
        await broker.join_all(timeout=10)
        consumers = {c.queue_name: c for c in worker._consumers}  # type: ignore[attr-defined]
        calm_channel = await consumers[calm_queue]._channel.get_underlay_channel()
        broken = await consumers[broken_queue]._channel.get_underlay_channel()
        # Acking an unknown delivery tag is a protocol error: RabbitMQ closes that channel.
        await broken.basic_ack(987654)
        await asyncio.sleep(1.5)
        await on_broken.send(2)
        await on_calm.send(2)
        await broker.join_all(timeout=20)
        assert (await consumers[calm_queue]._channel.get_underlay_channel()) is calm_channel
    assert sorted(done) == ["broken 1", "broken 2", "calm 1", "calm 2"]


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_broker_restart_under_load_loses_no_confirmed_message() -> None:
    queue_name = unique_name("restart")
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL, publish_timeout=60, reconnect_interval=0.5)
    impatient = aqueue.RabbitmqBroker(RABBITMQ_URL, publish_timeout=1.0, reconnect_interval=0.5)
    processed: set[int] = set()
    confirmed: set[int] = set()

    @broker.actor(queue_name=queue_name, concurrency=50)
    async def work(n: int) -> None:
        processed.add(n)

    hasty = impatient.actor(actor_name="work", queue_name=queue_name)(work.fn)

    async def produce() -> None:
        for i in range(4000):
            await work.send(i)  # waits through the outage, up to publish_timeout
            confirmed.add(i)
            await asyncio.sleep(0.001)

    try:
        await impatient.connect()
        async with aqueue.Worker(broker, queues=[queue_name]):
            producer = asyncio.ensure_future(produce())
            while len(processed) < 1000:
                await asyncio.sleep(0.01)
            outage = asyncio.ensure_future(asyncio.to_thread(restart_rabbitmq, 3.0))
            assert impatient.connection is not None
            while impatient.connection.connected.is_set():
                await asyncio.sleep(0.01)
            started = time.monotonic()
            with pytest.raises(aqueue.BrokerConnectionError, match=r"did not (confirm|answer)"):
                await hasty.send(-1)
            assert time.monotonic() - started < 3
            await outage
            await asyncio.wait_for(producer, 120)
            deadline = time.monotonic() + 60
            while not confirmed <= processed and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        assert len(confirmed) == 4000
        assert confirmed <= processed  # every confirmed message ran at least once
    finally:
        await asyncio.to_thread(rabbitmqctl, "await_startup")
        channel = await broker._channel_for_topology()
        await channel.queue_delete(queue_name)
        await channel.queue_delete(queue_name + ".XQ")
        await impatient.close()
        await broker.close()
