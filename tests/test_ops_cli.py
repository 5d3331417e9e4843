"""The operator commands (queues, dlq, send, check) and JSON logs, as real processes."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

import aqueue
from aqueue._admin import format_duration, parse_duration
from aqueue.cli import EXIT_RUNTIME_ERROR, EXIT_USAGE_ERROR

from .conftest import RABBITMQ_URL, RabbitAdmin

APP = """
import os

import aqueue

QUEUE = os.environ["AQUEUE_TEST_QUEUE"]
broker = aqueue.RabbitmqBroker()


class CardDeclined(Exception):
    pass


@broker.actor(queue_name=QUEUE, throws=CardDeclined)
async def charge(order_id: int, currency: str = "EUR") -> None:
    if order_id < 0:
        raise CardDeclined(f"card declined for order {order_id}")


@broker.actor(queue_name=QUEUE)
def refund(order_id: int) -> None:
    pass


not_an_actor = 42
"""

UNREACHABLE_URL = "amqp://guest:hunter2@127.0.0.1:1/"


class CardDeclined(Exception):
    pass


class Cli:
    """Runs ``aqueue`` in a directory holding the ``app`` module, against RabbitMQ."""

    def __init__(self, root: Path, queue: str) -> None:
        self.root = root
        self.queue = queue
        (root / "app.py").write_text(textwrap.dedent(APP))
        self.env = {
            **os.environ,
            "AQUEUE_BROKER_URL": RABBITMQ_URL,
            "AQUEUE_TEST_QUEUE": queue,
            "PYTHONPATH": str(root),
        }

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "aqueue", *args]

    async def run(
        self, *args: str, input: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run,
            self.argv(*args),
            cwd=self.root,
            env={**self.env, **(env or {})},
            input=input if input is not None else "",
            capture_output=True,
            text=True,
            timeout=90,
        )

    async def run_in_terminal(self, answer: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run with a pseudo-terminal as stdin, ``answer`` typed in it."""
        main, secondary = os.openpty()
        try:
            os.write(main, answer.encode())
            return await asyncio.to_thread(
                subprocess.run,
                self.argv(*args),
                cwd=self.root,
                env=self.env,
                stdin=secondary,
                capture_output=True,
                text=True,
                timeout=90,
            )
        finally:
            os.close(secondary)
            os.close(main)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args),
            cwd=self.root,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )


@pytest.fixture
def cli(tmp_path: Path, queue_name: str) -> Cli:
    return Cli(tmp_path, queue_name)


@pytest.fixture
async def app_broker(cli: Cli) -> AsyncIterator[aqueue.RabbitmqBroker]:
    """A broker in the test with the app's two actors on the test's queue."""
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL)

    @broker.actor(actor_name="charge", queue_name=cli.queue, throws=CardDeclined)
    async def charge(order_id: int, currency: str = "EUR") -> None:
        if order_id < 0:
            raise CardDeclined(f"card declined for order {order_id}")

    @broker.actor(actor_name="refund", queue_name=cli.queue)
    def refund(order_id: int) -> None:
        pass

    await broker.declare_queue(cli.queue)
    try:
        yield broker
    finally:
        await broker.close()


async def fail_for_real(broker: aqueue.RabbitmqBroker, queue: str, *order_ids: int) -> list[str]:
    """Dead letters made the real way: a worker runs charge(-n), which raises CardDeclined."""
    charge = broker.get_actor("charge")
    ids = [(await charge.send(order_id)).message_id for order_id in order_ids]
    async with aqueue.Worker(broker, queues=[queue]):
        await broker.join(queue, timeout=30)
    return ids


async def put_dead_letter(
    queue: str,
    *,
    actor: str = "charge",
    args: tuple[Any, ...] = (1,),
    failed_at: datetime.datetime | None = None,
    options: dict[str, Any] | None = None,
    connection: aio_pika.abc.AbstractConnection,
) -> str:
    """A dead letter as the worker writes it, published straight into ``queue.XQ``."""
    message = aqueue.Message(queue_name=queue, actor_name=actor, args=args, options=options or {})
    moment = failed_at or datetime.datetime.now(datetime.timezone.utc)
    headers: dict[str, Any] = {
        "x-aqueue-reason": "failed",
        "x-aqueue-queue": queue,
        "x-aqueue-actor": actor,
        "x-aqueue-exception": "RuntimeError",
        "x-aqueue-error": "boom",
        "x-aqueue-traceback": "Traceback (most recent call last):\nRuntimeError: boom\n",
        "x-aqueue-failed-at": moment.isoformat(),
        "x-aqueue-retries": str((options or {}).get("retries", 0)),
    }
    async with connection.channel() as channel:
        await channel.default_exchange.publish(
            aio_pika.Message(message.encode(), headers=headers, message_id=message.message_id),
            routing_key=queue + ".XQ",
        )
    return message.message_id


async def drain_ids(connection: aio_pika.abc.AbstractConnection, queue: str) -> list[str]:
    """Take every message off ``queue``; their message ids."""
    ids = []
    async with connection.channel() as channel:
        q = await channel.declare_queue(queue, passive=True)
        while (message := await q.get(fail=False, no_ack=True)) is not None:
            ids.append(aqueue.Message.decode(message.body).message_id)
    return ids


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("aqueue: error: "), lines
    return lines[0]


# -- durations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("7d", 604800), ("12h", 43200), ("30m", 1800), ("45s", 45), ("90", 90), ("1h30m", 5400)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "x", "3x", "1h foo", "-5"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (604800, 86400 * 3, 7200, 120, 45)] == [
        "7d",
        "3d",
        "2h",
        "2m",
        "45s",
    ]


# -- queues -----------------------------------------------------------------------------------


async def test_queues_shows_ready_consumers_and_dead_letters(
    cli: Cli, app_broker: aqueue.RabbitmqBroker, rabbit: RabbitAdmin, make_queue_name: Any
) -> None:
    charge = app_broker.get_actor("charge")
    await charge.send(1)
    await charge.send(2)
    await put_dead_letter(cli.queue, connection=rabbit.connection)
    missing = make_queue_name()

    result = await cli.run("queues", "--broker", "app")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["QUEUE", "READY", "CONSUMERS", "DEAD", "LETTERS"]
    assert lines[1].split() == [cli.queue, "2", "0", "1"]

    result = await cli.run("queues", cli.queue, missing, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        {
            "queue": cli.queue,
            "exists": True,
            "ready": 2,
            "consumers": 0,
            "dead_letter_queue": cli.queue + ".XQ",
            "dead_letters": 1,
        },
        {
            "queue": missing,
            "exists": False,
            "ready": None,
            "consumers": None,
            "dead_letter_queue": missing + ".XQ",
            "dead_letters": None,
        },
    ]
    table = (await cli.run("queues", missing)).stdout.splitlines()
    assert table[1].split() == [missing, "(missing)", "-", "-", "-"]


async def test_queues_counts_consumers_of_a_running_worker(
    cli: Cli, app_broker: aqueue.RabbitmqBroker
) -> None:
    async with aqueue.Worker(app_broker, queues=[cli.queue]):
        result = await cli.run("queues", "--json", "--broker", "app:broker")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["consumers"] == 1


async def test_queues_without_names_or_actors_is_a_usage_error(cli: Cli) -> None:
    result = await cli.run("queues")
    assert result.returncode == EXIT_USAGE_ERROR
    assert "name the queues, or give --broker" in one_line_error(result)


# -- dlq ------------------------------------------------------------------------------------


async def test_find_why_a_message_failed_and_replay_it(
    cli: Cli, app_broker: aqueue.RabbitmqBroker, rabbit: RabbitAdmin
) -> None:
    declined, other = await fail_for_real(app_broker, cli.queue, -17, -18)

    result = await cli.run("dlq", "ls", cli.queue)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split()[:5] == ["ID", "ACTOR", "REASON", "FAILED", "AT"]
    assert len(rows) == 2
    row = next(r for r in rows if r.startswith(declined))
    assert row.split()[1:3] == ["charge", "failed"]
    assert "CardDeclined: card declined for order -17" in row

    listed = json.loads((await cli.run("dlq", "ls", cli.queue, "--json")).stdout)
    assert {entry["message_id"] for entry in listed} == {declined, other}
    assert {entry["reason"] for entry in listed} == {"failed"}
    assert all(entry["failed_at"] for entry in listed)

    result = await cli.run("dlq", "show", cli.queue, declined)
    assert result.returncode == 0, result.stderr
    shown = result.stdout
    assert f"message id:  {declined}" in shown
    assert "error:       CardDeclined: card declined for order -17" in shown
    assert "args:        [-17]" in shown
    assert "x-aqueue-reason: failed" in shown
    assert "Traceback (most recent call last)" in shown
    assert 'raise CardDeclined(f"card declined for order {order_id}")' in shown

    details = json.loads((await cli.run("dlq", "show", cli.queue, declined, "--json")).stdout)
    assert details["message"]["args"] == [-17]
    assert details["exception"] == "CardDeclined"
    assert details["headers"]["x-aqueue-actor"] == "charge"
    assert "CardDeclined" in details["traceback"]

    # The dead letters are still there after reading them.
    assert await rabbit.count(cli.queue + ".XQ") == 2

    result = await cli.run("dlq", "replay", cli.queue, "--id", declined)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"replayed 1 dead letter to {cli.queue}"
    assert await rabbit.count(cli.queue + ".XQ") == 1
    replayed = await rabbit.get(cli.queue)
    assert replayed is not None
    message = aqueue.Message.decode(replayed.body)
    assert (message.message_id, message.args) == (declined, (-17,))
    assert "retries" not in message.options


async def test_replay_resets_the_retry_count_and_selects_by_actor_or_all(
    cli: Cli, app_broker: aqueue.RabbitmqBroker, rabbit: RabbitAdmin
) -> None:
    connection = rabbit.connection
    retried = await put_dead_letter(
        cli.queue, options={"retries": 3, "first_failed_at": 1}, connection=connection
    )
    refund = await put_dead_letter(cli.queue, actor="refund", connection=connection)
    last = await put_dead_letter(cli.queue, connection=connection)

    result = await cli.run("dlq", "replay", cli.queue, "--actor", "refund")
    assert result.stdout.strip() == f"replayed 1 dead letter to {cli.queue}"
    assert await drain_ids(connection, cli.queue) == [refund]

    result = await cli.run("dlq", "replay", cli.queue, "--all")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"replayed 2 dead letters to {cli.queue}"
    async with connection.channel() as channel:
        q = await channel.declare_queue(cli.queue, passive=True)
        bodies = [aqueue.Message.decode((await q.get(no_ack=True)).body) for _ in range(2)]
    assert [m.message_id for m in bodies] == [retried, last]
    assert bodies[0].options == {}
    assert await rabbit.count(cli.queue + ".XQ") == 0


async def test_replay_needs_a_selection_and_reports_missing_ids(
    cli: Cli, app_broker: aqueue.RabbitmqBroker, rabbit: RabbitAdmin
) -> None:
    result = await cli.run("dlq", "replay", cli.queue)
    assert result.returncode == EXIT_USAGE_ERROR
    assert "--id ID (repeatable), --actor NAME or --all" in result.stderr
    result = await cli.run("dlq", "replay", cli.queue, "--all", "--actor", "charge")
    assert result.returncode == EXIT_USAGE_ERROR

    known = await put_dead_letter(cli.queue, connection=rabbit.connection)
    result = await cli.run("dlq", "replay", cli.queue, "--id", known, "--id", "not-there")
    assert result.returncode == EXIT_RUNTIME_ERROR
    assert result.stdout.strip() == f"replayed 1 dead letter to {cli.queue}"
    assert "1 of the 2 ids were not found" in one_line_error(result)


async def test_replay_killed_half_way_loses_nothing(
    cli: Cli, app_broker: aqueue.RabbitmqBroker, rabbit: RabbitAdmin
) -> None:
    connection = rabbit.connection
    body_ids = []
    async with connection.channel() as channel:
        for i in range(400):
            message = aqueue.Message(queue_name=cli.queue, actor_name="charge", args=(i,))
            body_ids.append(message.message_id)
            await channel.default_exchange.publish(
                aio_pika.Message(
                    message.encode(),
                    headers={"x-aqueue-reason": "failed", "x-aqueue-actor": "charge"},
                    message_id=message.message_id,
                ),
                routing_key=cli.queue + ".XQ",
            )
    process = cli.popen("dlq", "replay", cli.queue, "--all")
    try:
        deadline = time.monotonic() + 30
        while await rabbit.count(cli.queue) == 0:
            assert time.monotonic() < deadline, "the replay did not start"
            assert process.poll() is None, "the replay finished before it could be killed"
            await asyncio.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(process.wait, 10)
    finally:
        if process.poll() is None:
            process.kill()
        assert process.stdout is not None
        process.stdout.close()
    # What the killed process had taken but not acked goes back to the dead-letter queue.
    deadline = time.monotonic() + 30
    while await rabbit.count(cli.queue) + await rabbit.count(cli.queue + ".XQ") < 400:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    replayed = await drain_ids(connection, cli.queue)
    still_dead = await drain_ids(connection, cli.queue + ".XQ")
    assert replayed and still_dead, "killed before or after the replay, not half way"
    assert set(replayed) | set(still_dead) == set(body_ids)
    # At most the one in flight when killed is in both.
    assert len(replayed) + len(still_dead) - len(body_ids) <= 1


async def test_purge_asks_first_and_selects_by_age(
    cli: Cli, app_broker: aqueue.RabbitmqBroker, rabbit: RabbitAdmin
) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    old = now - datetime.timedelta(days=10)
    connection = rabbit.connection
    for moment in (old, old, now):
        await put_dead_letter(cli.queue, failed_at=moment, connection=connection)

    # In a terminal it asks; answers typed in a pseudo-terminal.
    result = await cli.run_in_terminal("n\n", "dlq", "purge", cli.queue, "--older-than", "7d")
    assert result.returncode == EXIT_RUNTIME_ERROR
    assert result.stdout.startswith(
        f"Delete the dead letters of {cli.queue} that failed more than 7d ago "
        f"(3 in {cli.queue}.XQ)?"
    )
    assert await rabbit.count(cli.queue + ".XQ") == 3

    result = await cli.run_in_terminal("y\n", "dlq", "purge", cli.queue, "--older-than", "7d")
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith(f"[y/N]: deleted 2 dead letters of {cli.queue}\n")
    assert await rabbit.count(cli.queue + ".XQ") == 1

    # No terminal and no --yes: refused, even with an answer piped in; nothing deleted.
    result = await cli.run("dlq", "purge", cli.queue, input="y\n")
    assert result.returncode == EXIT_RUNTIME_ERROR
    assert one_line_error(result).endswith(
        "stdin is not a terminal: pass --yes to delete without asking"
    )
    assert await rabbit.count(cli.queue + ".XQ") == 1

    result = await cli.run("dlq", "purge", cli.queue, "--yes")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"deleted 1 dead letter of {cli.queue}"
    assert await rabbit.count(cli.queue + ".XQ") == 0

    result = await cli.run("dlq", "purge", cli.queue, "--yes")
    assert result.stdout.strip() == f"no dead letters in {cli.queue}.XQ"


async def test_dlq_commands_on_a_queue_that_does_not_exist(cli: Cli) -> None:
    for args in (["ls"], ["show", "some-id"], ["replay", "--all"], ["purge", "--yes"]):
        result = await cli.run("dlq", args[0], cli.queue, *args[1:])
        assert result.returncode == EXIT_RUNTIME_ERROR, args
        assert f"queue {cli.queue!r} has no dead-letter queue" in one_line_error(result)


async def test_show_of_an_unknown_id(cli: Cli, app_broker: aqueue.RabbitmqBroker) -> None:
    result = await cli.run("dlq", "show", cli.queue, "nope")
    assert result.returncode == EXIT_RUNTIME_ERROR
    assert "no dead letter with id 'nope'" in one_line_error(result)


# -- send -------------------------------------------------------------------------------------


async def test_send_by_hand(cli: Cli, rabbit: RabbitAdmin) -> None:
    result = await cli.run("send", "app:charge", "--args", "[5]", "--kwargs", '{"currency": "USD"}')
    assert result.returncode == 0, result.stderr
    message_id = result.stdout.split()[1]
    got = await rabbit.get(cli.queue)
    assert got is not None
    message = aqueue.Message.decode(got.body)
    assert (message.message_id, message.actor_name) == (message_id, "charge")
    assert (message.args, message.kwargs) == ((5,), {"currency": "USD"})

    started = time.monotonic()
    result = await cli.run(
        "send", "app:refund", "--args", "[6]", "--delay", "2s", "--options", '{"max_retries": 0}'
    )
    assert result.returncode == 0, result.stderr
    assert await rabbit.count(cli.queue) == 0
    while (got := await rabbit.get(cli.queue)) is None:
        assert time.monotonic() - started < 30
        await asyncio.sleep(0.1)
    assert time.monotonic() - started >= 2
    message = aqueue.Message.decode(got.body)
    assert (message.actor_name, message.args, message.options) == (
        "refund",
        (6,),
        {"max_retries": 0},
    )


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["app:charge", "--args", '["x"]'], "argument 'order_id'"),
        (["app:charge"], "missing"),
        (["app:charge", "--args", "[1", "--kwargs", "{}"], "--args: invalid JSON"),
        (["app:charge", "--kwargs", "[1]"], "--kwargs must be a JSON object"),
        (["app:charge", "--args", "[1]", "--options", '{"nope": 1}'], "unknown option 'nope'"),
        (["app:nothing"], "has no attribute 'nothing'"),
        (["app:not_an_actor"], "is a int, not an aqueue actor"),
        (["app"], "expected MODULE:ACTOR"),
        (["no_such_module:x"], "cannot import 'no_such_module'"),
    ],
)
async def test_send_refuses_bad_input_with_exit_code_2(
    cli: Cli, rabbit: RabbitAdmin, args: list[str], error: str
) -> None:
    result = await cli.run("send", *args)
    assert result.returncode == EXIT_USAGE_ERROR, result.stderr
    assert error in one_line_error(result)


async def test_send_to_an_unreachable_broker_exits_1(cli: Cli) -> None:
    result = await cli.run(
        "send", "app:charge", "--args", "[1]", env={"AQUEUE_BROKER_URL": UNREACHABLE_URL}
    )
    assert result.returncode == EXIT_RUNTIME_ERROR
    assert "cannot connect to RabbitMQ at 127.0.0.1:1" in one_line_error(result)
    assert "hunter2" not in result.stderr


# -- check ------------------------------------------------------------------------------------


async def test_check_passes_when_the_topology_is_in_place(
    cli: Cli, app_broker: aqueue.RabbitmqBroker
) -> None:
    # No worker consumes the queue here: check the topology only (tests/test_health.py checks
    # that a queue nobody consumes fails).
    result = await cli.run("check", "--broker", "app", "--no-consumers")
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok\n", "")
    assert (await cli.run("check")).stdout == "ok\n"  # just the connection
    assert (await cli.run("check", cli.queue, "--no-consumers")).returncode == 0


async def test_check_fails_for_a_missing_queue(cli: Cli, rabbit: RabbitAdmin) -> None:
    result = await cli.run("check", "--broker", "app")
    assert result.returncode == EXIT_RUNTIME_ERROR
    assert one_line_error(result) == f"aqueue: error: queue {cli.queue!r} does not exist"


async def test_check_fails_for_a_missing_dead_letter_queue(
    cli: Cli, app_broker: aqueue.RabbitmqBroker, rabbit: RabbitAdmin
) -> None:
    await rabbit.delete(cli.queue + ".XQ")
    result = await cli.run("check", cli.queue)
    assert result.returncode == EXIT_RUNTIME_ERROR
    assert one_line_error(result) == f"aqueue: error: queue '{cli.queue}.XQ' does not exist"


async def test_check_fails_fast_when_the_broker_is_unreachable(cli: Cli) -> None:
    started = time.monotonic()
    result = await cli.run("check", env={"AQUEUE_BROKER_URL": UNREACHABLE_URL})
    assert result.returncode == EXIT_RUNTIME_ERROR
    assert "cannot connect to RabbitMQ at 127.0.0.1:1" in one_line_error(result)
    assert time.monotonic() - started < 15


async def test_check_with_an_invalid_url_is_a_usage_error(cli: Cli) -> None:
    result = await cli.run("check", env={"AQUEUE_BROKER_URL": "http://example.com"})
    assert result.returncode == EXIT_USAGE_ERROR
    assert "invalid broker URL" in one_line_error(result)


async def test_debug_shows_the_traceback(cli: Cli) -> None:
    env = {"AQUEUE_BROKER_URL": UNREACHABLE_URL}
    result = await cli.run("--debug", "dlq", "ls", cli.queue, env=env)
    assert result.returncode == EXIT_RUNTIME_ERROR
    assert "Traceback (most recent call last)" in result.stderr
    assert "BrokerConnectionError" in result.stderr


# -- logs -------------------------------------------------------------------------------------


async def test_worker_logs_json_lines_with_message_fields(
    cli: Cli, app_broker: aqueue.RabbitmqBroker
) -> None:
    process = cli.popen("worker", "app", "--log-format", "json")
    assert process.stdout is not None
    try:
        lines: list[dict[str, Any]] = []

        async def read_until(predicate: Any) -> dict[str, Any]:
            deadline = time.monotonic() + 30
            while True:
                assert time.monotonic() < deadline, lines
                line = await asyncio.to_thread(process.stdout.readline)  # type: ignore[union-attr]
                assert line, lines
                lines.append(json.loads(line))  # every line is one JSON object
                if predicate(lines[-1]):
                    return lines[-1]

        started = await read_until(lambda entry: "worker started" in entry["message"])
        assert started["level"] == "INFO"
        assert started["logger"] == "aqueue.cli"
        message = await app_broker.get_actor("charge").send(-3)
        failed = await read_until(lambda entry: entry["level"] == "ERROR")
        assert failed["message_id"] == message.message_id
        assert failed["actor"] == "charge"
        assert failed["queue"] == cli.queue
        assert "CardDeclined" in failed["message"]
        datetime.datetime.fromisoformat(failed["timestamp"])
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()


def test_json_formatter_writes_extra_fields_and_tracebacks() -> None:
    import logging

    from aqueue._logging import JsonFormatter

    logger = logging.getLogger(f"test.{uuid.uuid4().hex}")
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        record = logger.makeRecord(
            logger.name,
            logging.WARNING,
            __file__,
            1,
            "failed %s",
            ("x",),
            sys.exc_info(),
            extra={"message_id": "m1", "actor": "a", "queue": None, "custom": object},
        )
    text = JsonFormatter().format(record)
    assert "\n" not in text
    entry = json.loads(text)
    assert entry["message"] == "failed x"
    assert entry["level"] == "WARNING"
    assert (entry["message_id"], entry["actor"]) == ("m1", "a")
    assert "queue" not in entry
    assert entry["custom"] == str(object)
    assert entry["exc_info"].startswith("Traceback")
    assert "ValueError: bad" in entry["exc_info"]
