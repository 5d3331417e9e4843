"""Connections by role, RabbitMQ's flow control (resource alarms) and broker URL lists."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

import aqueue
from aqueue.brokers.rabbitmq import flow_control
from aqueue.middleware.prometheus import Prometheus

from .conftest import RABBITMQ_URL, RabbitAdmin, connections_of_pid, rabbitmqctl


def _disk_free_limit() -> int:
    out = rabbitmqctl("eval", "rabbit_disk_monitor:get_disk_free_limit().")
    return int(out.strip())


def _alarms() -> str:
    return rabbitmqctl("eval", "rabbit_alarm:get_alarms().")


class DiskAlarm:
    """Raise RabbitMQ's disk alarm by asking for more free disk than any machine has."""

    def __init__(self) -> None:
        self.previous_limit = _disk_free_limit()

    async def raise_(self) -> None:
        await asyncio.to_thread(rabbitmqctl, "set_disk_free_limit", "100000GB")
        deadline = time.monotonic() + 20
        while "disk" not in await asyncio.to_thread(_alarms):
            assert time.monotonic() < deadline, "RabbitMQ raised no disk alarm"
            await asyncio.sleep(0.1)

    async def clear(self) -> None:
        await asyncio.to_thread(rabbitmqctl, "set_disk_free_limit", str(self.previous_limit))
        deadline = time.monotonic() + 20
        while "disk" in await asyncio.to_thread(_alarms):
            assert time.monotonic() < deadline, "RabbitMQ did not clear its disk alarm"
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def disk_alarm() -> AsyncIterator[DiskAlarm]:
    """A disk alarm for the block; the node's own limit is always restored after it."""
    alarm = DiskAlarm()
    try:
        await alarm.raise_()
        yield alarm
    finally:
        await alarm.clear()
        assert _disk_free_limit() == alarm.previous_limit


async def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def test_aiormq_still_has_the_frame_handlers_flow_control_wraps() -> None:
    # Fails when an aiormq release renames them: connection.blocked would go unnoticed.
    flow_control.check_aiormq()


@pytest.mark.slow
async def test_consumers_and_acks_go_on_during_a_disk_alarm_that_blocks_publishing(
    make_queue_name: Callable[[], str], rabbit: RabbitAdmin
) -> None:
    plain_queue, relay_queue, target_queue = (make_queue_name() for _ in range(3))
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL, publish_timeout=120)
    registry = CollectorRegistry()
    broker.add_middleware(Prometheus(registry=registry))

    def blocked_gauge() -> float | None:
        return registry.get_sample_value("aqueue_broker_blocked")

    plain_runs: list[int] = []
    relayed: list[int] = []
    followed: list[int] = []
    events: list[str] = []
    broker.add_connection_listener(events.append)

    @broker.actor(queue_name=plain_queue)
    async def plain(n: int) -> None:
        plain_runs.append(n)

    @broker.actor(queue_name=target_queue)
    async def follow(n: int) -> None:
        followed.append(n)

    @broker.actor(queue_name=relay_queue)
    async def relay(n: int) -> None:
        await follow.send(n)  # a publish from a worker: RabbitMQ blocks that connection
        relayed.append(n)

    try:
        await broker.declare_queue(target_queue)
        await asyncio.gather(*(relay.send(i) for i in range(20)))
        await asyncio.gather(*(plain.send(i) for i in range(400)))
        async with disk_alarm() as alarm:
            worker = aqueue.Worker(
                broker, queues=[relay_queue, plain_queue, target_queue], shutdown_timeout=2
            )
            async with worker:
                await wait_until(lambda: broker.blocked, 20, "the publishing connection blocked")
                assert "disk" in (broker.blocked_reason or "")
                assert blocked_gauge() == 1
                await wait_until(lambda: len(plain_runs) == 400, 30, "all 400 plain messages")
                # Their acks went through the consuming connection during the alarm.
                assert "disk" in await asyncio.to_thread(_alarms)
                assert followed == [] and relayed == []
                await broker.join(plain_queue, timeout=20)
                assert await rabbit.count(plain_queue) == 0
                await alarm.clear()
                await wait_until(lambda: len(followed) == 20, 60, "the 20 relayed messages")
                await wait_until(lambda: not broker.blocked, 10, "unblocked")
                assert blocked_gauge() == 0
                for q in (relay_queue, target_queue, plain_queue):
                    await broker.join(q, timeout=30)
        assert sorted(plain_runs) == list(range(400))
        assert sorted(followed) == sorted(relayed) == list(range(20))
        assert events.count("blocked") == 1 and events.count("unblocked") == 1
    finally:
        await broker.close()


@pytest.mark.slow
async def test_send_during_an_alarm_raises_broker_blocked_error_within_publish_timeout(
    queue_name: str, rabbit: RabbitAdmin
) -> None:
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL, publish_timeout=1.5)

    @broker.actor(queue_name=queue_name)
    async def task() -> None:
        pass

    try:
        await broker.declare_queue(queue_name)
        async with disk_alarm() as alarm:
            started = time.monotonic()
            with pytest.raises(aqueue.BrokerBlockedError) as info:
                await task.send()
            elapsed = time.monotonic() - started
            assert 1.5 <= elapsed < 3.0
            message = str(info.value)
            assert "blocks publishing" in message and "disk" in message
            assert "may still be published when the alarm clears" in message
            assert isinstance(info.value, aqueue.BrokerConnectionError)
            assert broker.blocked
            await alarm.clear()
            await wait_until(lambda: not broker.blocked, 10, "unblocked")
        # As the error says: RabbitMQ takes the message once it reads the connection again.
        deadline = time.monotonic() + 10
        while await rabbit.count(queue_name) < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        await task.send()  # and sends work again
        assert await rabbit.count(queue_name) == 2
    finally:
        await broker.close()


def _amqp_sockets_of(pid: int, port: int = 5672) -> int:
    """TCP connections of process ``pid`` to ``port`` (from /proc: no tool needed)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == port and fields[3] == "01" and fields[9] in inodes:
                count += 1
    return count


WORKER_MODULE = """
import os
import time

import aqueue

QUEUES = os.environ["AQUEUE_TEST_QUEUES"].split(",")
OUT = os.environ["AQUEUE_TEST_OUT"]

def record(text):
    with open(OUT, "a") as f:
        f.write(text + "\\n")

def make(index, queue):
    if index % 2:
        def blocking(n: int) -> None:
            time.sleep(0.01)
            record(f"{queue} {n}")
        fn = blocking
    else:
        async def non_blocking(n: int) -> None:
            record(f"{queue} {n}")
        fn = non_blocking
    return aqueue.actor(fn, actor_name=f"actor_{index}", queue_name=queue)

ACTORS = [make(i, q) for i, q in enumerate(QUEUES)]
"""

PRODUCER = """
import asyncio, sys
import worker_app

async def main():
    for actor in worker_app.ACTORS:
        await actor.send(1)
    print("sent", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

asyncio.run(main())
"""


@pytest.fixture
def twenty_queues(tmp_path: Path, make_queue_name: Callable[[], str]) -> dict[str, str]:
    (tmp_path / "worker_app.py").write_text(textwrap.dedent(WORKER_MODULE))
    (tmp_path / "producer.py").write_text(textwrap.dedent(PRODUCER))
    return {
        **os.environ,
        "AQUEUE_BROKER_URL": RABBITMQ_URL,
        "AQUEUE_TEST_QUEUES": ",".join(make_queue_name() for _ in range(20)),
        "AQUEUE_TEST_OUT": str(tmp_path / "out.txt"),
        "PYTHONPATH": str(tmp_path),
    }


@pytest.mark.slow
def test_a_producer_holds_one_connection_and_a_worker_of_twenty_queues_two(
    tmp_path: Path, twenty_queues: dict[str, str]
) -> None:
    log = (tmp_path / "worker.log").open("w")
    with subprocess.Popen(
        [sys.executable, "producer.py"],
        cwd=tmp_path,
        env=twenty_queues,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as producer:
        assert producer.stdout is not None and producer.stdin is not None
        assert producer.stdout.readline() == "sent\n"
        assert connections_of_pid(producer.pid) == 1
        assert connections_of_pid(producer.pid, "publish") == 1
        assert _amqp_sockets_of(producer.pid) == 1
        producer.stdin.close()
        assert producer.wait(20) == 0
    with (
        log,
        subprocess.Popen(
            [sys.executable, "-m", "aqueue", "worker", "worker_app", "--threads", "8"],
            cwd=tmp_path,
            env=twenty_queues,
            stdout=log,
            stderr=subprocess.STDOUT,
        ) as worker,
    ):
        try:
            out = tmp_path / "out.txt"
            deadline = time.monotonic() + 60
            while len(out.read_text().splitlines() if out.exists() else []) < 20:
                assert time.monotonic() < deadline and worker.poll() is None
                time.sleep(0.1)
            assert connections_of_pid(worker.pid, "consume") == 1
            assert connections_of_pid(worker.pid, "publish") == 1
            assert connections_of_pid(worker.pid) == 2
            assert _amqp_sockets_of(worker.pid) == 2
            worker.terminate()
            assert worker.wait(30) == 0
        finally:
            if worker.poll() is None:
                worker.kill()


async def test_single_connection_folds_both_roles_into_one(queue_name: str) -> None:
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL, single_connection=True)
    done: list[int] = []

    @broker.actor(queue_name=queue_name)
    async def task(n: int) -> None:
        done.append(n)

    try:
        await task.send(1)
        async with aqueue.Worker(broker, queues=[queue_name]):
            await broker.join(queue_name, timeout=10)
            assert broker.consuming_connection is broker.connection
            assert await asyncio.to_thread(connections_of_pid, os.getpid(), "publish+consume") == 1
        assert done == [1]
    finally:
        await broker.close()


def test_urls_as_a_list_a_comma_separated_string_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = "amqp://u:p@node-a:5672/", "amqps://v:q@node-b:5671/vh"
    assert aqueue.RabbitmqBroker([a, b]).urls == [a, b]
    assert aqueue.RabbitmqBroker(f"{a}, {b}").urls == [a, b]
    monkeypatch.setenv("AQUEUE_BROKER_URL", f"{a},{b}")
    broker = aqueue.RabbitmqBroker()
    assert broker.urls == [a, b]
    assert broker.url == a
    assert "p@" not in repr(broker) and "q@" not in repr(broker)
    with pytest.raises(ValueError, match="invalid broker URL") as info:
        aqueue.RabbitmqBroker(f"{a},http://x:secret@h/")
    assert "secret" not in str(info.value)
    with pytest.raises(ValueError, match="no broker URL"):
        aqueue.RabbitmqBroker([])


async def test_connect_moves_on_to_the_next_url_when_a_node_is_down() -> None:
    dead = "amqp://guest:topsecret@127.0.0.1:1/"
    broker = aqueue.RabbitmqBroker([dead, RABBITMQ_URL], shuffle_urls=False)
    try:
        started = time.monotonic()
        await broker.connect()
        assert time.monotonic() - started < 3  # no back-off before trying the next node
        assert broker.connection is not None
        assert broker.connection.url.port == 5672
    finally:
        await broker.close()
    unreachable = aqueue.RabbitmqBroker(
        [dead, "amqp://guest:alsosecret@127.0.0.1:2/"],
        connect_attempts=4,
        connect_retry_delay=0.05,
    )
    with pytest.raises(aqueue.BrokerConnectionError) as info:
        await unreachable.connect()
    message = str(info.value)
    assert "127.0.0.1:1" in message and "127.0.0.1:2" in message and "4 attempts" in message
    assert "secret" not in message


async def test_a_lost_connection_reconnects_to_the_next_url(queue_name: str) -> None:
    # Two URLs of one node, told apart by host name: the reconnect must use the other.
    other = re.sub(r"@127\.0\.0\.1:", "@localhost:", RABBITMQ_URL)
    assert other != RABBITMQ_URL
    broker = aqueue.RabbitmqBroker([RABBITMQ_URL, other], shuffle_urls=False)
    done: list[int] = []

    @broker.actor(queue_name=queue_name)
    async def task(n: int) -> None:
        done.append(n)

    try:
        async with aqueue.Worker(broker, queues=[queue_name]):
            await task.send(1)
            await broker.join(queue_name, timeout=10)
            assert broker.connection is not None and broker.consuming_connection is not None
            assert broker.consuming_connection.url.host == "127.0.0.1"
            listing = await asyncio.to_thread(
                rabbitmqctl, "list_connections", "pid", "client_properties"
            )
            for line in listing.splitlines():
                if f"pid {os.getpid()}" in line and "aqueue " in line:
                    await asyncio.to_thread(
                        rabbitmqctl, "close_connection", line.split("\t")[0], "test failover"
                    )
            await wait_until(
                lambda: (
                    broker.consuming_connection is not None
                    and broker.consuming_connection.url.host == "localhost"
                    and broker.consuming_connection.connected.is_set()
                ),
                20,
                "the consuming connection on the other URL",
            )
            await task.send(2)  # the publishing connection moved too, and works
            assert broker.connection.url.host == "localhost"
            await wait_until(lambda: done == [1, 2], 20, "the second message, consumed again")
    finally:
        await broker.close()


async def test_a_node_that_accepts_tcp_but_never_answers_times_out_the_handshake() -> None:
    held: list[asyncio.StreamWriter] = []

    async def accept_and_say_nothing(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    broker = aqueue.RabbitmqBroker(
        f"amqp://guest:guest@127.0.0.1:{port}/",
        connect_timeout=0.5,
        connect_attempts=2,
        connect_retry_delay=0.1,
    )
    try:
        started = time.monotonic()
        with pytest.raises(aqueue.BrokerConnectionError, match="2 attempts") as info:
            await broker.connect()
        assert time.monotonic() - started < 3
        assert f"127.0.0.1:{port}" in str(info.value)
        # With a live node after it in the list, the frozen one is skipped in time.
        frozen_first = aqueue.RabbitmqBroker(
            [f"amqp://guest:guest@127.0.0.1:{port}/", RABBITMQ_URL],
            shuffle_urls=False,
            connect_timeout=0.5,
        )
        started = time.monotonic()
        await frozen_first.connect()
        assert time.monotonic() - started < 3
        await frozen_first.close()
    finally:
        await broker.close()
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_vhost_that_does_not_exist_is_one_clear_error() -> None:
    url = re.sub(r"/[^/]*$", "/no-such-vhost", RABBITMQ_URL.rstrip("/") + "/")
    broker = aqueue.RabbitmqBroker(url, connect_attempts=3)
    started = time.monotonic()
    with pytest.raises(aqueue.BrokerConnectionError) as info:
        await broker.connect()
    assert time.monotonic() - started < 3  # not retried: it will not get better
    message = str(info.value)
    assert "'no-such-vhost'" in message and "does not exist" in message
    assert "\n" not in message and "guest:guest" not in message
