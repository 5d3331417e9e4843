"""Moving from Dramatiq queue by queue, against the real dramatiq package and RabbitMQ:
callbacks into queues Dramatiq still owns, the operator commands on shared queues, a mixed
fleet that loses a worker to SIGKILL, and the migration guide's steps."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import dramatiq
import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker as DramatiqBroker

import aqueue
from aqueue.brokers.rabbitmq.clash_probe import (
    PROBE_ARGUMENT,
    planned_declarations,
    probe_declarations,
)
from aqueue.brokers.rabbitmq.dramatiq_compat import DRAMATIQ_DEFAULT_QUEUE, dramatiq_queue_of
from aqueue.cli import EXIT_RUNTIME_ERROR
from aqueue.errors import ActorDefinitionError
from aqueue.middleware import Callbacks

from .conftest import RABBITMQ_URL, RabbitAdmin, unique_name
from .test_docs import Examples
from .test_dramatiq_compat import DramatiqWorker, eventually
from .test_ops_cli import Cli, one_line_error

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def dramatiq_queue(rabbit: RabbitAdmin) -> str:
    """A queue Dramatiq owns: it and its ``.XQ`` are deleted afterwards."""
    name = unique_name("dq")
    rabbit.created.add(name)
    return name


@pytest.fixture
def dramatiq_broker() -> Iterator[DramatiqBroker]:
    broker = DramatiqBroker(url=RABBITMQ_URL, confirm_delivery=True)
    try:
        yield broker
    finally:
        broker.close()


async def _delete_delay_queues(rabbit: RabbitAdmin, *queues: str) -> None:
    await rabbit.delete(*(q + ".DQ" for q in queues))


# -- callbacks into Dramatiq-owned queues -------------------------------------------------------


def test_an_unlisted_dramatiq_actor_is_in_dramatiqs_default_queue() -> None:
    queues = {"notify": "emails"}
    assert dramatiq_queue_of(queues, "notify") == "emails"
    assert dramatiq_queue_of(queues, "other") == DRAMATIQ_DEFAULT_QUEUE == "default"


def test_dramatiq_actors_are_checked_and_need_compat() -> None:
    with pytest.raises(ValueError, match="dramatiq_compat=True"):
        aqueue.RabbitmqBroker(RABBITMQ_URL, dramatiq_actors={"notify": "emails"})
    with pytest.raises(ActorDefinitionError):
        aqueue.RabbitmqBroker(RABBITMQ_URL, dramatiq_compat=True, dramatiq_actors={"n": "x.XQ"})


async def test_a_callback_to_an_actor_only_dramatiq_has_runs_once_on_a_dramatiq_worker(
    queue_name: str,
    dramatiq_queue: str,
    dramatiq_broker: DramatiqBroker,
    rabbit: RabbitAdmin,
) -> None:
    # Dramatiq owns dramatiq_queue and declared it first; queue_name moved to aqueue.
    notified: list[tuple[dict[str, Any], Any]] = []

    @dramatiq.actor(queue_name=dramatiq_queue, actor_name="notify", broker=dramatiq_broker)
    def notify(message: dict[str, Any], result: Any) -> None:
        notified.append((message, result))

    await asyncio.to_thread(dramatiq_broker.declare_queue, dramatiq_queue, ensure=True)
    broker = aqueue.RabbitmqBroker(
        RABBITMQ_URL, dramatiq_compat=True, dramatiq_actors={"notify": dramatiq_queue}
    )
    runs: list[int] = []

    @broker.actor(queue_name=queue_name, on_success="notify")
    async def work(n: int) -> int:
        runs.append(n)
        return n * 2

    try:
        sent = await work.send(21)
        with DramatiqWorker(dramatiq_broker):
            async with aqueue.Worker(broker, queues=[queue_name]):
                await eventually(lambda: len(notified) == 1)
            # The aqueue worker stopped: its ack is sent, nothing of it is left to redeliver.
            assert await rabbit.count(queue_name) == 0
            assert await rabbit.count(dramatiq_queue) == 0
        assert runs == [21]
        [(message, result)] = notified
        assert (message["message_id"], message["actor_name"], result) == (
            sent.message_id,
            "work",
            42,
        )
        assert await rabbit.count(queue_name + ".XQ") == 0
        assert await rabbit.count(dramatiq_queue + ".XQ") == 0
    finally:
        await broker.close()
        await _delete_delay_queues(rabbit, queue_name, dramatiq_queue)


# -- the operator commands ----------------------------------------------------------------------

COMPAT_APP = """
import os

import aqueue

broker = aqueue.RabbitmqBroker(dramatiq_compat=True, dramatiq_max_priority=5)


@broker.actor(queue_name=os.environ["AQUEUE_TEST_QUEUE"], actor_name="job")
def job(n: int) -> None:
    pass
"""


@pytest.fixture
def cli(tmp_path: Path, queue_name: str) -> Cli:
    (tmp_path / "compat_app.py").write_text(COMPAT_APP)
    return Cli(tmp_path, queue_name)


@pytest.fixture
def prioritized_dramatiq_broker() -> Iterator[DramatiqBroker]:
    broker = DramatiqBroker(url=RABBITMQ_URL, confirm_delivery=True, max_priority=5)
    try:
        yield broker
    finally:
        broker.close()


async def _dramatiq_sends(broker: DramatiqBroker, queue: str) -> None:
    """Dramatiq declares ``queue`` (and .DQ, .XQ), then sends one plain and two delayed."""

    @dramatiq.actor(queue_name=queue, actor_name="job", broker=broker)
    def job(n: int) -> None: ...

    await asyncio.to_thread(broker.declare_queue, queue, ensure=True)
    await asyncio.to_thread(job.send, 1)
    for n in (2, 3):
        await asyncio.to_thread(job.send_with_options, args=(n,), delay=600_000)


async def test_queues_counts_dramatiq_delayed_messages(
    cli: Cli, dramatiq_broker: DramatiqBroker, rabbit: RabbitAdmin
) -> None:
    try:
        await _dramatiq_sends(dramatiq_broker, cli.queue)
        result = await cli.run("queues", cli.queue, "--dramatiq", "--json")
        assert result.returncode == 0, result.stderr
        [row] = json.loads(result.stdout)
        assert (row["ready"], row["dramatiq_delay_queue"], row["dramatiq_delayed"]) == (
            1,
            cli.queue + ".DQ",
            2,
        )
        # A compat broker's queues show it without --dramatiq; another broker's do not.
        table = (await cli.run("queues", "--broker", "compat_app")).stdout.splitlines()
        header = ["QUEUE", "READY", "CONSUMERS", "DEAD", "LETTERS", "DRAMATIQ", ".DQ"]
        assert table[0].split() == header
        assert table[1].split() == [cli.queue, "1", "0", "0", "2"]
        plain = await cli.run("queues", cli.queue, "--json")
        assert "dramatiq_delayed" not in json.loads(plain.stdout)[0]
    finally:
        await _delete_delay_queues(rabbit, cli.queue)


async def test_check_reports_a_declaration_that_would_clash_and_changes_nothing(
    cli: Cli, prioritized_dramatiq_broker: DramatiqBroker, rabbit: RabbitAdmin
) -> None:
    try:
        await _dramatiq_sends(prioritized_dramatiq_broker, cli.queue)

        # A broker without compat would be refused: one line saying so, exit 1.
        result = await cli.run("check", cli.queue, "--no-consumers")
        assert result.returncode == EXIT_RUNTIME_ERROR
        error = one_line_error(result)
        assert f"queue '{cli.queue}.XQ' exists with other arguments" in error
        assert "x-message-ttl='604800000'" in error and "dramatiq_compat=True" in error

        # Compat brokers use these queues: the differences they accept and the .DQ backlog.
        result = await cli.run("check", cli.queue, "--dramatiq", "--no-consumers")
        assert result.returncode == 0, result.stderr
        notes = result.stdout.splitlines()
        assert notes[-1] == "ok"
        assert any(f"'{cli.queue}'" in n and "x-max-priority=5" in n for n in notes), notes
        assert f"queue '{cli.queue}.DQ': 2 Dramatiq delayed messages to move" in " ".join(notes)
        # With the same max_priority as Dramatiq, nothing differs.
        result = await cli.run("check", "--broker", "compat_app", "--no-consumers")
        assert result.returncode == 0, result.stderr
        assert "x-max-priority" not in result.stdout
        # Workers: nothing consumes the queue or its .DQ.
        result = await cli.run("check", "--broker", "compat_app")
        assert one_line_error(result).endswith(
            f"no worker consumes queues '{cli.queue}', '{cli.queue}.DQ' "
            "(0 consumers; --no-consumers checks the topology only)"
        )

        # Nothing was created or changed: Dramatiq still declares its queues as before.
        prioritized_dramatiq_broker.queues_pending.add(cli.queue)
        await asyncio.to_thread(prioritized_dramatiq_broker.declare_queue, cli.queue, ensure=True)
        assert await rabbit.count(cli.queue) == 1
    finally:
        await _delete_delay_queues(rabbit, cli.queue)


async def test_the_probe_never_creates_a_queue_and_passes_an_equal_one(
    queue_name: str, rabbit: RabbitAdmin
) -> None:
    # What the check relies on: RabbitMQ refuses to create a queue with PROBE_ARGUMENT, and
    # does not compare it on an existing queue.
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL)
    key, value = PROBE_ARGUMENT
    try:
        [_, (_, arguments)] = await planned_declarations(broker._declarations, queue_name)
        assert await broker.queue_info(queue_name) is None
        async with rabbit.connection.channel() as channel:
            with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed, match="invalid arg"):
                await channel.declare_queue(
                    queue_name, durable=True, arguments={**arguments, key: value}
                )
        assert await broker.queue_info(queue_name) is None
        assert [p.exists for p in await probe_declarations(broker, queue_name)] == [False, False]

        await broker.declare_queue(queue_name)
        probes = await probe_declarations(broker, queue_name)
        assert [(p.queue, p.exists, p.clash) for p in probes] == [
            (queue_name + ".XQ", True, None),
            (queue_name, True, None),
        ]
    finally:
        await broker.close()


# -- a mixed fleet that loses a worker ------------------------------------------------------------

FLEET_AQUEUE = """
import asyncio
import os

import aqueue

broker = aqueue.RabbitmqBroker(dramatiq_compat=True)


@broker.actor(queue_name=os.environ["FLEET_QUEUE"], actor_name="job")
async def job(n: int) -> None:
    await asyncio.sleep(0.05)
    with open(os.path.join(os.environ["FLEET_OUT"], f"aqueue-{os.getpid()}.txt"), "a") as out:
        out.write(f"{n}\\n")
"""

FLEET_DRAMATIQ = """
import os
import time

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

broker = RabbitmqBroker(url=os.environ["AQUEUE_BROKER_URL"], confirm_delivery=True)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=os.environ["FLEET_QUEUE"], actor_name="job")
def job(n: int) -> None:
    time.sleep(0.01)
    with open(os.path.join(os.environ["FLEET_OUT"], f"dramatiq-{os.getpid()}.txt"), "a") as out:
        out.write(f"{n}\\n")
"""


class Fleet:
    """The two kinds of worker, as processes, writing the numbers they ran to files."""

    def __init__(self, root: Path, queue: str) -> None:
        self.root = root
        self.out = root / "out"
        self.out.mkdir()
        (root / "fleet_aqueue.py").write_text(FLEET_AQUEUE)
        (root / "fleet_dramatiq.py").write_text(FLEET_DRAMATIQ)
        self.env = {
            **os.environ,
            "AQUEUE_BROKER_URL": RABBITMQ_URL,
            "FLEET_QUEUE": queue,
            "FLEET_OUT": str(self.out),
            "PYTHONPATH": str(root),
        }
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, *argv: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-m", *argv],
            cwd=self.root,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.processes.append(process)
        return process

    def aqueue_worker(self) -> subprocess.Popen[bytes]:
        return self.start("aqueue", "worker", "fleet_aqueue", "--log-level", "warning")

    def dramatiq_worker(self) -> subprocess.Popen[bytes]:
        return self.start("dramatiq", "fleet_dramatiq", "--processes", "1", "--threads", "4")

    def runs(self, kind: str = "") -> list[int]:
        numbers = []
        for path in self.out.glob(f"{kind}*.txt"):
            numbers += [int(line) for line in path.read_text().split() if line.isdigit()]
        return numbers

    async def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                await asyncio.to_thread(process.wait, 15)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)


async def test_mixed_fleet_loses_nothing_when_the_aqueue_worker_is_killed(
    tmp_path: Path, queue_name: str, dramatiq_broker: DramatiqBroker, rabbit: RabbitAdmin
) -> None:
    total = 600  # even numbers from Dramatiq's producer, odd from aqueue's; 1 in 10 delayed
    fleet = Fleet(tmp_path, queue_name)
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL, dramatiq_compat=True)

    @broker.actor(queue_name=queue_name, actor_name="job")
    async def job(n: int) -> None: ...

    @dramatiq.actor(queue_name=queue_name, actor_name="job", broker=dramatiq_broker)
    def d_job(n: int) -> None: ...

    def send_from_dramatiq(numbers: range) -> None:
        for n in numbers:
            if n % 20 == 0:
                d_job.send_with_options(args=(n,), delay=300 + n % 700)
            else:
                d_job.send(n)

    async def send(start: int, stop: int) -> None:
        await asyncio.gather(
            asyncio.to_thread(send_from_dramatiq, range(start, stop, 2)),
            *(
                job.send_with_options(args=(n,), delay=0.3 + n % 7 / 10 if n % 20 == 1 else None)
                for n in range(start + 1, stop, 2)
            ),
        )

    figures: dict[str, int] = {}

    def report() -> str:
        runs = fleet.runs()
        figures.update(
            sent=total,
            processed=len(set(runs)),
            duplicated=len(runs) - len(set(runs)),
            lost=total - len(set(runs) & set(range(total))),
            by_aqueue=len(fleet.runs("aqueue")),
            by_dramatiq=len(fleet.runs("dramatiq")),
        )
        return ", ".join(f"{k}={v}" for k, v in figures.items())

    try:
        await broker.declare_queue(queue_name)
        fleet.dramatiq_worker()
        victim = fleet.aqueue_worker()
        deadline = time.monotonic() + 20
        while (info := await broker.queue_info(queue_name)) is None or info.consumers < 2:
            assert time.monotonic() < deadline, "the workers did not start"
            await asyncio.sleep(0.05)
        await send(0, total // 2)
        deadline = time.monotonic() + 20
        while len(fleet.runs("aqueue")) < 30:
            assert time.monotonic() < deadline, f"the aqueue worker ran nothing: {report()}"
            await asyncio.sleep(0.01)
        victim.send_signal(signal.SIGKILL)  # while it holds messages it has not acked
        await asyncio.to_thread(victim.wait, 10)
        figures["run_before_the_kill"] = len(set(fleet.runs()))
        await send(total // 2, total)
        fleet.aqueue_worker()
        deadline = time.monotonic() + 25
        while len(set(fleet.runs())) < total:
            assert time.monotonic() < deadline, f"messages lost: {report()}"
            await asyncio.sleep(0.05)
    finally:
        await fleet.stop()
        await broker.close()
        await _delete_delay_queues(rabbit, queue_name)
    summary = report()
    print(f"mixed fleet with a SIGKILL: {summary}")
    assert figures["lost"] == 0, summary
    assert set(fleet.runs()) == set(range(total)), summary
    assert figures["by_aqueue"] > 30 and figures["by_dramatiq"] > 0, summary
    assert figures["run_before_the_kill"] < total // 2, f"killed too late: {summary}"


# -- the migration guide ------------------------------------------------------------------------


class Process:
    """A command in the examples' directory, its output (stdout and stderr) read as it comes."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.output = ""
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, examples: Examples, *argv: str) -> Process:
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=examples.directory,
            env=examples.env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.output += line.decode()

    async def finish(self, timeout: float = 30) -> int:
        """Wait for the command to exit (after ``stop`` for a worker); its exit code."""
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
            await asyncio.wait_for(self._reader, timeout)
        except asyncio.TimeoutError:
            self.process.kill()
            raise AssertionError(f"{self.process.args} did not exit:\n{self.output}") from None
        return self.process.returncode or 0

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.terminate()
        return await self.finish()


async def run(examples: Examples, *argv: str) -> tuple[int, str]:
    process = await Process.start(examples, *argv)
    code = await process.finish()
    return code, process.output


def aqueue_command(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "aqueue", *args)


async def test_the_migration_guide_step_by_step(tmp_path: Path, rabbit: RabbitAdmin) -> None:
    examples = Examples(tmp_path)
    orders = examples.q("orders")
    rabbit.created.add(orders)
    processes: list[Process] = []

    def charged(order_id: int) -> int:
        return sum(p.output.count(f"charging order {order_id}\n") for p in processes)

    async def until(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            outputs = "\n".join(p.output for p in processes)
            assert time.monotonic() < deadline, f"timed out: {what}\n{outputs}"
            await asyncio.sleep(0.05)

    async def consumers() -> int:
        info = await rabbit.connection.channel()
        try:
            queue = await info.declare_queue(orders, passive=True)
            return int(queue.declaration_result.consumer_count or 0)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return 0
        finally:
            if not info.is_closed:
                await info.close()

    try:
        # Before: Dramatiq's workers and producers.
        dramatiq_worker = await Process.start(
            examples, sys.executable, "-m", "dramatiq", "dramatiq_orders", "-p", "1", "-t", "2"
        )
        processes.append(dramatiq_worker)
        code, _ = await run(examples, sys.executable, "dramatiq_orders.py")
        assert code == 0
        # 1. Run aqueue compat workers next to them.
        aqueue_worker = await Process.start(examples, *aqueue_command("worker", "dramatiq_shared"))
        processes.append(aqueue_worker)
        deadline = time.monotonic() + 20
        while await consumers() < 2:
            assert time.monotonic() < deadline, dramatiq_worker.output + aqueue_worker.output
            await asyncio.sleep(0.05)
        # 2. Switch producers: aqueue's messages run too (on either kind of worker).
        code, output = await run(examples, sys.executable, "dramatiq_producer.py")
        assert code == 0, output
        await until(lambda: charged(1) == charged(2) == charged(1001) == charged(1002) == 1, "1")
        # 3. Stop the Dramatiq workers; a delayed message a Dramatiq worker held runs anyway.
        code, _ = await run(examples, sys.executable, "dramatiq_orders.py")
        assert code == 0
        await until(lambda: charged(1) == 2, "Dramatiq's second message")
        assert await dramatiq_worker.stop() == 0
        await until(lambda: charged(2) == 2, "the delayed message Dramatiq held")
        # 4. .DQ is drained: the commands say so.
        code, output = await run(
            examples, *aqueue_command("queues", "--broker", "dramatiq_shared", "--json")
        )
        assert code == 0, output
        assert json.loads(output)[0]["dramatiq_delayed"] == 0
        code, output = await run(examples, *aqueue_command("check", "--broker", "dramatiq_shared"))
        assert (code, output) == (0, "ok\n")
        # 5. .XQ: to leave compat, stop the queue's processes and delete the empty .DQ and .XQ;
        # until then a broker without compat would be refused, as check says.
        assert await aqueue_worker.stop() == 0
        code, output = await run(
            examples, *aqueue_command("check", "--broker", "dramatiq_done", "--no-consumers")
        )
        assert code == 1 and f"'{orders}.XQ' exists with other arguments" in output, output
        code, output = await run(examples, sys.executable, "dramatiq_cleanup.py")
        assert code == 0, output
        assert output.split() == ["deleted", f"{orders}.DQ", "deleted", f"{orders}.XQ"]
        worker = await Process.start(examples, *aqueue_command("worker", "dramatiq_done"))
        processes.append(worker)
        await until(lambda: "worker started" in worker.output, "the worker without compat")
        code, output = await run(examples, *aqueue_command("check", "--broker", "dramatiq_done"))
        assert (code, output) == (0, "ok\n")
        assert (charged(1), charged(2), charged(1001), charged(1002)) == (2, 2, 1, 1)
    finally:
        for process in processes:
            await process.stop()
        await rabbit.delete(orders + ".DQ")


async def test_callbacks_publish_to_a_foreign_actor_by_name_on_the_in_memory_broker_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The middleware's side of it, with no Dramatiq: any broker, any rule for the queue.
    broker = aqueue.InMemoryBroker()
    callbacks = next(m for m in broker.middleware if isinstance(m, Callbacks))
    callbacks.foreign_queue = {"notify": "emails"}.get

    @broker.actor(queue_name="work", on_success="notify", on_failure="unknown")
    async def work(n: int) -> int:
        if n < 0:
            raise ValueError("negative")
        return n * 2

    sent = await work.send(21)
    await work.send_with_options(args=(-1,), max_retries=0)
    async with aqueue.Worker(broker, queues=["work"]):
        await broker.join("work", timeout=10)
    info = await broker.queue_info("emails")
    assert info is not None and info.ready == 1
    # An actor the rule does not place is not sent, and said so.
    assert "callback unknown of message" in caplog.text

    notified: list[tuple[str, Any]] = []

    @broker.actor(queue_name="emails")
    async def notify(message: dict[str, Any], result: Any) -> None:
        notified.append((message["message_id"], result))

    async with aqueue.Worker(broker, queues=["emails"]):
        await broker.join("emails", timeout=10)
    assert notified == [(sent.message_id, 42)]
