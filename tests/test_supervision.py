"""Worker processes under stress: a pool that outlives a crashing child, a stop during an outage.

Real processes of ``aqueue worker`` against the real RabbitMQ (through a TCP proxy in the
test's own event loop where the network must fail).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

import aqueue

from ._proxy import FaultProxy
from .conftest import RABBITMQ_URL, RabbitAdmin

APP_MODULE = """
import os
import sys

import aqueue

OUT = os.environ["AQUEUE_TEST_OUT"]
QUEUES = os.environ["AQUEUE_TEST_QUEUES"].split(",")
broker = aqueue.RabbitmqBroker()


def record(line: str) -> None:
    with open(OUT, "a") as f:
        f.write(line + "\\n")


@broker.actor(queue_name=QUEUES[0], max_redeliveries=1)
async def crash(text: str) -> None:
    if text == "poison":
        sys.stderr.write("poison: exiting at once\\n")
        sys.stderr.flush()
        if os.environ.get("AQUEUE_TEST_POISON") == "SystemExit":
            raise SystemExit(1)
        os._exit(1)
    record(text)


def _record_on(queue_name: str, index: int) -> None:
    async def keep(n: int) -> None:
        record(f"{index} {n}")

    broker.actor(actor_name=f"keep{index}", queue_name=queue_name)(keep)


for _index, _name in enumerate(QUEUES[1:], start=1):
    _record_on(_name, _index)
"""


class App:
    """A worker module in a directory of its own; its processes log to a file."""

    def __init__(self, root: Path, queues: list[str]) -> None:
        self.root = root
        self.queues = queues
        self.out = root / "out.txt"
        self.log = root / "log.txt"
        (root / "stress_app.py").write_text(textwrap.dedent(APP_MODULE))
        self.env = {
            **os.environ,
            "AQUEUE_BROKER_URL": RABBITMQ_URL,
            "AQUEUE_TEST_OUT": str(self.out),
            "AQUEUE_TEST_QUEUES": ",".join(queues),
            "PYTHONPATH": str(root),
        }
        self.processes: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []

    def start(
        self, *args: str, module: str = "stress_app", url: str | None = None
    ) -> subprocess.Popen[bytes]:
        log = self.log.open("ab")
        self._logs.append(log)
        env = dict(self.env)
        if url is not None:
            env["AQUEUE_BROKER_URL"] = url
        process = subprocess.Popen(
            [sys.executable, "-m", "aqueue", "worker", module, *args],
            cwd=self.root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        return process

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def wait_output(
        self, text: str, count: int = 1, process: subprocess.Popen[bytes] | None = None
    ) -> None:
        deadline = time.monotonic() + 30
        while self.output().count(text) < count:
            if time.monotonic() > deadline or (process is not None and process.poll() is not None):
                raise AssertionError(f"no {count} x {text!r} in:\n{self.output()}")
            await asyncio.sleep(0.05)

    def records(self) -> list[str]:
        return self.out.read_text().splitlines() if self.out.exists() else []

    async def wait_records(
        self, wanted: set[str], process: subprocess.Popen[bytes], timeout: float = 30
    ) -> None:
        deadline = time.monotonic() + timeout
        while not wanted <= set(self.records()):
            if time.monotonic() > deadline or process.poll() is not None:
                raise AssertionError(f"missing {wanted - set(self.records())}:\n{self.output()}")
            await asyncio.sleep(0.05)

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in self._logs:
            log.close()


@pytest.fixture
def make_app(tmp_path: Path, make_queue_name: Callable[[], str]) -> Iterator[Callable[[int], App]]:
    apps: list[App] = []

    def make(queues: int) -> App:
        root = tmp_path / f"app{len(apps)}"
        root.mkdir()
        app = App(root, [make_queue_name() for _ in range(queues)])
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


async def send(app: App, actor: str, queue_index: int, *args: object) -> None:
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL)

    async def placeholder(*a: object) -> None: ...

    sender = broker.actor(actor_name=actor, queue_name=app.queues[queue_index])(placeholder)
    try:
        await sender.send(*args)
    finally:
        await broker.close()


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return sorted(int(p) for p in out.stdout.split())


async def wait_children(pool: subprocess.Popen[bytes], count: int) -> list[int]:
    deadline = time.monotonic() + 30
    while len(children := children_of(pool.pid)) != count:
        assert pool.poll() is None, "the pool stopped"
        assert time.monotonic() < deadline, f"children: {children}"
        await asyncio.sleep(0.1)
    return children


@pytest.mark.parametrize("how", ["os._exit", "SystemExit"])
async def test_a_child_killed_by_a_poison_message_is_replaced_and_the_pool_keeps_running(
    make_app: Callable[[int], App], rabbit: RabbitAdmin, how: str
) -> None:
    app = make_app(2)
    app.env["AQUEUE_TEST_POISON"] = how
    pool = app.start("--processes", "2")
    await app.wait_output("worker started", 2, pool)
    first = children_of(pool.pid)
    assert len(first) == 2

    # Seconds after its start, a child exits with code 1 on a poison message.
    await send(app, "crash", 0, "poison")
    for n in range(10):
        await send(app, "crash", 0, f"healthy {n}")
        await send(app, "keep1", 1, n)
    await app.wait_output("poison: exiting at once", 1, pool)
    wanted = {f"healthy {n}" for n in range(10)} | {f"1 {n}" for n in range(10)}
    await app.wait_records(wanted, pool)

    # The pool lives on: the crashed child was replaced by a new one, which started.
    await app.wait_output("worker started", 3, pool)
    assert "restarting it in 0.5 s" in app.output()
    replaced = await wait_children(pool, 2)
    assert replaced != first

    # Redelivered, republished, run again: its second crash puts it past max_redeliveries 1,
    # and it is dead-lettered instead of run a third time.
    deadline = time.monotonic() + 60
    while await rabbit.count(app.queues[0] + ".XQ") < 1:
        assert pool.poll() is None, f"the pool stopped:\n{app.output()}"
        assert time.monotonic() < deadline, app.output()
        await asyncio.sleep(0.2)
    assert app.output().count("poison: exiting at once") == 2
    await app.wait_output("worker started", 4, pool)
    await wait_children(pool, 2)
    await send(app, "keep1", 1, 99)
    await app.wait_records({"1 99"}, pool)
    assert pool.poll() is None

    pool.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(pool.wait, 30) == 0


async def test_a_pool_whose_module_cannot_import_exits_2_promptly(
    make_app: Callable[[int], App],
) -> None:
    app = make_app(1)
    started = time.monotonic()
    pool = app.start("--processes", "2", module="no_such_module_here")
    assert await asyncio.to_thread(pool.wait, 30) == 2
    assert time.monotonic() - started < 10
    assert "cannot import 'no_such_module_here'" in app.output()
    assert "restarting" not in app.output()


async def test_a_pool_that_cannot_reach_the_broker_exits_1(
    make_app: Callable[[int], App],
) -> None:
    app = make_app(1)
    pool = app.start("--processes", "2", url="amqp://guest:guest@127.0.0.1:1/")
    assert await asyncio.to_thread(pool.wait, 60) == 1
    assert "cannot connect to RabbitMQ" in app.output()
    assert "restarting" not in app.output()


async def test_stop_during_an_outage_is_bounded_by_the_shutdown_timeout_and_exits_0(
    make_app: Callable[[int], App],
) -> None:
    app = make_app(10)
    proxy = await FaultProxy("127.0.0.1", 5672).start()
    try:
        worker = app.start("--shutdown-timeout", "1", url=proxy.url())
        await app.wait_output("worker started", 1, worker)
        await send(app, "keep3", 3, 1)
        await app.wait_records({"3 1"}, worker)

        proxy.blackholed = True  # the broker is gone, the sockets stay open
        await asyncio.sleep(0.5)
        started = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(worker.wait, 20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still stopping after 20 s:\n{app.output()}")
        took = time.monotonic() - started
    finally:
        await proxy.close()
    assert code == 0, app.output()
    assert took < 8, f"took {took:.1f} s"
    out = app.output()
    assert "worker stopped" in out
    assert "Traceback" not in out
    # One warning, not one per queue (nor aiormq's for each channel's cancelled call).
    assert out.count("the broker did not answer while the worker stopped") == 1, out
    assert "because RPC call" not in out, out
