"""The `aqueue` command line, run as real processes against RabbitMQ."""

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

import pytest

import aqueue

from .conftest import RABBITMQ_URL, RabbitAdmin, channels_of_pid, connections_of_pid

WORKER_MODULE = """
import asyncio
import os
import time

import aqueue

OUT = os.environ["AQUEUE_TEST_OUT"]
QUEUES = os.environ["AQUEUE_TEST_QUEUES"].split(",")
broker = aqueue.RabbitmqBroker()


def record(line: str) -> None:
    with open(OUT, "a") as f:
        f.write(line + "\\n")


@broker.actor(queue_name=QUEUES[0])
async def one(n: int) -> None:
    record(f"one {n}")


@broker.actor(queue_name=QUEUES[1])
async def two(n: int) -> None:
    record(f"two {n}")


@broker.actor(queue_name=QUEUES[2])
async def three(seconds: float) -> None:
    await asyncio.sleep(seconds)
    record(f"three {seconds}")


@broker.actor(queue_name=QUEUES[3])
def four(n: int) -> None:
    record(f"four {n}")


@broker.actor(queue_name=QUEUES[4])
def five(seconds: float) -> None:
    time.sleep(seconds)
    record(f"five {seconds}")
"""


class WorkerProject:
    def __init__(self, root: Path, queues: list[str]) -> None:
        self.root = root
        self.queues = queues
        self.out = root / "out.txt"
        (root / "worker_app.py").write_text(textwrap.dedent(WORKER_MODULE))
        self.env = {
            **os.environ,
            "AQUEUE_BROKER_URL": RABBITMQ_URL,
            "AQUEUE_TEST_OUT": str(self.out),
            "AQUEUE_TEST_QUEUES": ",".join(queues),
            "PYTHONPATH": str(root),
        }
        self.processes: list[subprocess.Popen[str]] = []

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "aqueue", "worker", "worker_app", *args],
            cwd=self.root,
            env={**self.env, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.processes.append(process)
        return process

    def wait_started(self, process: subprocess.Popen[str], count: int = 1) -> list[str]:
        """Read output until ``count`` workers said they started."""
        assert process.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while sum("worker started" in line for line in lines) < count:
            if time.monotonic() > deadline or process.poll() is not None:
                raise AssertionError("worker did not start:\n" + "".join(lines))
            line = process.stdout.readline()
            lines.append(line)
        return lines

    def records(self) -> list[str]:
        return self.out.read_text().splitlines() if self.out.exists() else []

    def wait_records(self, count: int, timeout: float = 20) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.records()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {self.records()}")
            time.sleep(0.05)
        return self.records()


@pytest.fixture
def project(tmp_path: Path, make_queue_name: Callable[[], str]) -> Iterator[WorkerProject]:
    p = WorkerProject(tmp_path, [make_queue_name() for _ in range(5)])
    yield p
    for process in p.processes:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


async def send(project: WorkerProject, actor_index: int, *args: object) -> None:
    """Send to the worker module's actors from this process, by name."""
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL)
    names = ["one", "two", "three", "four", "five"]

    async def placeholder(*a: object) -> None: ...

    actor = broker.actor(actor_name=names[actor_index], queue_name=project.queues[actor_index])(
        placeholder
    )
    try:
        await actor.send(*args)
    finally:
        await broker.close()


def test_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "aqueue", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"aqueue, version {aqueue.__version__}"


async def test_worker_with_five_actors_and_eight_threads_holds_a_connection_per_role(
    project: WorkerProject,
) -> None:
    process = project.start("--threads", "8")
    lines = await asyncio.to_thread(project.wait_started, process)
    started = "".join(lines)
    assert "guest:***@" in started
    assert "guest:guest" not in started
    for i in range(5):
        await send(project, i, 0.01 if i in (2, 4) else i)
    records = await asyncio.to_thread(project.wait_records, 5)
    assert sorted(r.split()[0] for r in records) == ["five", "four", "one", "three", "two"]
    # One connection consumes, one publishes (RabbitMQ blocks publishers during alarms).
    assert await asyncio.to_thread(connections_of_pid, process.pid, "consume") == 1
    assert await asyncio.to_thread(connections_of_pid, process.pid, "publish") == 1
    assert await asyncio.to_thread(connections_of_pid, process.pid) == 2
    # One channel per queue and one for declaring; one for publishing.
    assert await asyncio.to_thread(channels_of_pid, process.pid) == 5 + 2
    process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait, 20) == 0


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_worker_runs_on_either_event_loop(project: WorkerProject, loop: str) -> None:
    process = project.start("--loop", loop, "--log-level", "debug")
    lines = await asyncio.to_thread(project.wait_started, process)
    assert ("using uvloop" in "".join(lines)) == (loop == "uvloop")
    await send(project, 0, 7)
    await asyncio.to_thread(project.wait_records, 1)
    process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait, 20) == 0


async def test_sigterm_lets_a_running_blocking_task_finish_and_exits_zero(
    project: WorkerProject, rabbit: RabbitAdmin
) -> None:
    process = project.start()
    await asyncio.to_thread(project.wait_started, process)
    await send(project, 4, 2.0)
    await send(project, 2, 2.0)
    await asyncio.sleep(0.7)
    process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait, 20) == 0
    assert sorted(project.records()) == ["five 2.0", "three 2.0"]
    assert await rabbit.count(project.queues[4]) == 0
    assert await rabbit.count(project.queues[2]) == 0


async def test_second_sigint_stops_at_once_and_requeues(
    project: WorkerProject, rabbit: RabbitAdmin
) -> None:
    process = project.start("--shutdown-timeout", "60")
    await asyncio.to_thread(project.wait_started, process)
    await send(project, 2, 30.0)
    await asyncio.sleep(0.7)
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    await asyncio.sleep(0.3)
    assert process.poll() is None  # the first interrupt waits for the running task
    process.send_signal(signal.SIGINT)
    assert await asyncio.to_thread(process.wait, 20) == 0
    assert time.monotonic() - started < 10
    assert project.records() == []
    assert await rabbit.count(project.queues[2]) == 1


async def test_processes_each_hold_two_connections_and_the_parent_none(
    project: WorkerProject,
) -> None:
    process = project.start("--processes", "2")
    await asyncio.to_thread(project.wait_started, process, 2)
    children = await asyncio.to_thread(_children_of, process.pid)
    assert len(children) == 2
    assert await asyncio.to_thread(connections_of_pid, process.pid) == 0
    for child in children:
        assert await asyncio.to_thread(connections_of_pid, child) == 2
    for i in range(10):
        await send(project, 0, i)
    await asyncio.to_thread(project.wait_records, 10)
    process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait, 20) == 0


def _children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_unreachable_broker_gives_one_line_and_exit_code_1(project: WorkerProject) -> None:
    process = project.start(env={"AQUEUE_BROKER_URL": "amqp://guest:hunter2@127.0.0.1:1/"})
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 1
    last = out.strip().splitlines()[-1]
    assert last.startswith("aqueue: error: cannot connect to RabbitMQ at 127.0.0.1:1")
    assert "hunter2" not in out
    assert "Traceback" not in out


def test_module_that_cannot_be_imported_is_a_usage_error(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "aqueue", "worker", "no_such_module_here"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "cannot import 'no_such_module_here'" in out.stderr
    assert "Traceback" not in out.stderr


def test_unknown_queue_is_a_usage_error(project: WorkerProject) -> None:
    process = project.start("--queues", "nope")
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 2
    assert "no actor uses queue nope" in out
