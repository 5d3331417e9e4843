"""What a new user meets in the first hour: purge without a terminal, actors on the wrong
broker, the pytest plugin without pytest-asyncio."""

from __future__ import annotations

import asyncio
import datetime
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import aio_pika
import pytest

import aqueue
from aqueue.cli import EXIT_RUNTIME_ERROR, EXIT_USAGE_ERROR

from .conftest import RABBITMQ_URL, RabbitAdmin

NOT_A_TERMINAL = "stdin is not a terminal: pass --yes to delete without asking"


def run_aqueue(
    root: Path, *args: str, stdin: int | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m aqueue ARGS`` in ``root``; stdin a pipe fed ``input`` unless ``stdin``."""
    options: dict[str, Any] = {"stdin": stdin} if stdin is not None else {"input": input or ""}
    return subprocess.run(
        [sys.executable, "-m", "aqueue", *args],
        cwd=root,
        env={**os.environ, "AQUEUE_BROKER_URL": RABBITMQ_URL, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=90,
        **options,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("aqueue: error: "), lines
    return lines[0]


async def put_dead_letter(queue: str, connection: aio_pika.abc.AbstractConnection) -> str:
    """A dead letter as the worker writes it, published straight into ``queue.XQ``."""
    message = aqueue.Message(queue_name=queue, actor_name="charge", args=(1,), options={})
    headers: dict[str, Any] = {
        "x-aqueue-reason": "failed",
        "x-aqueue-queue": queue,
        "x-aqueue-actor": "charge",
        "x-aqueue-exception": "RuntimeError",
        "x-aqueue-error": "boom",
        "x-aqueue-traceback": "Traceback (most recent call last):\nRuntimeError: boom\n",
        "x-aqueue-failed-at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "x-aqueue-retries": "0",
    }
    async with connection.channel() as channel:
        await channel.default_exchange.publish(
            aio_pika.Message(message.encode(), headers=headers, message_id=message.message_id),
            routing_key=queue + ".XQ",
        )
    return message.message_id


@pytest.fixture
async def two_dead_letters(rabbit: RabbitAdmin, queue_name: str) -> str:
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL)
    try:
        await broker.declare_queue(queue_name)
    finally:
        await broker.close()
    for _ in range(2):
        await put_dead_letter(queue_name, rabbit.connection)
    assert await rabbit.count(queue_name + ".XQ") == 2
    return queue_name


# -- 1. dlq purge without a terminal ------------------------------------------------------------


@pytest.mark.parametrize("piped", ["", "y\n", "yes\n"])
async def test_purge_without_a_terminal_refuses_and_deletes_nothing(
    tmp_path: Path, rabbit: RabbitAdmin, two_dead_letters: str, piped: str
) -> None:
    queue = two_dead_letters
    result = await asyncio.to_thread(run_aqueue, tmp_path, "dlq", "purge", queue, input=piped)
    assert result.returncode == EXIT_RUNTIME_ERROR, result
    line = one_line_error(result)
    assert line.endswith(NOT_A_TERMINAL), line
    assert "Abort" not in result.stdout + result.stderr
    assert await rabbit.count(queue + ".XQ") == 2

    result = await asyncio.to_thread(run_aqueue, tmp_path, "dlq", "purge", queue, "--yes")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"deleted 2 dead letters of {queue}"
    assert await rabbit.count(queue + ".XQ") == 0


def run_with_a_terminal(root: Path, answer: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run aqueue with a pseudo-terminal as stdin, ``answer`` typed in it."""
    main, secondary = os.openpty()
    try:
        os.write(main, answer.encode())
        return run_aqueue(root, *args, stdin=secondary)
    finally:
        os.close(secondary)
        os.close(main)


async def test_purge_with_a_terminal_asks_first(
    tmp_path: Path, rabbit: RabbitAdmin, two_dead_letters: str
) -> None:
    queue = two_dead_letters
    result = await asyncio.to_thread(run_with_a_terminal, tmp_path, "n\n", "dlq", "purge", queue)
    assert result.returncode == EXIT_RUNTIME_ERROR, result
    assert result.stdout.startswith(f"Delete all 2 dead letters of {queue}? [y/N]: ")
    assert "nothing deleted" in result.stderr
    assert await rabbit.count(queue + ".XQ") == 2

    result = await asyncio.to_thread(run_with_a_terminal, tmp_path, "y\n", "dlq", "purge", queue)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith(f"[y/N]: deleted 2 dead letters of {queue}\n")
    assert await rabbit.count(queue + ".XQ") == 0


# -- 2. actors on the default broker, the module's broker empty ---------------------------------

ACTORS_ON_THE_DEFAULT_BROKER = """
import aqueue

broker = aqueue.RabbitmqBroker()
other = aqueue.RabbitmqBroker()


@aqueue.actor(queue_name="first-hour")
async def charge(order_id: int) -> None:
    pass


@aqueue.actor(queue_name="first-hour")
def refund(order_id: int) -> None:
    pass
"""


@pytest.mark.parametrize(("spec", "attribute"), [("shop", "broker"), ("shop:other", "other")])
def test_worker_explains_actors_declared_on_the_default_broker(
    tmp_path: Path, spec: str, attribute: str
) -> None:
    (tmp_path / "shop.py").write_text(textwrap.dedent(ACTORS_ON_THE_DEFAULT_BROKER))
    result = run_aqueue(tmp_path, "worker", spec)
    assert result.returncode == EXIT_USAGE_ERROR, result
    line = one_line_error(result)
    assert f"module 'shop' defines broker `{attribute}`" in line, line
    assert "registered on the default broker (aqueue.get_broker())" in line, line
    assert "charge, refund" in line, line
    assert f"@{attribute}.actor" in line, line
    assert f"@aqueue.actor(broker={attribute})" in line, line
    assert f"aqueue.set_broker({attribute})" in line, line
    assert "import the modules that declare them" not in line


# -- 3. the pytest plugin without pytest-asyncio ------------------------------------------------


def test_plugin_fixtures_without_pytest_asyncio_say_what_to_install(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pytest-asyncio is installed here: hide it behind a module that cannot be imported,
    # first on the path, and keep pytest from loading its plugin.
    hidden = pytester.mkdir("hidden")
    (hidden / "pytest_asyncio.py").write_text("raise ImportError('hidden by the test')\n")
    monkeypatch.setenv("PYTHONPATH", str(hidden))
    pytester.makepyfile(
        test_sample="""
        def test_wants_a_broker(aqueue_broker):
            pass

        def test_wants_a_drain(aqueue_drain):
            pass

        def test_wants_nothing():
            pass
        """
    )
    pytester.makeini("[pytest]\n")
    result = pytester.runpytest_subprocess("-p", "no:asyncio", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=2)
    output = result.stdout.str()
    assert "fixture 'aqueue_broker' not found" not in output
    assert output.count("pip install 'aqueue[pytest]'") >= 2, output
    assert "pytest-asyncio" in output


def test_the_pytest_extra_brings_pytest_asyncio() -> None:
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    extra = pyproject["project"]["optional-dependencies"]["pytest"]
    assert any(requirement.startswith("pytest-asyncio") for requirement in extra), extra
