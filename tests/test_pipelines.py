"""``aqueue.pipeline``: steps one after another, each given the result of the one before."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import dramatiq
import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker as DramatiqBroker

import aqueue
from aqueue import Worker

from .conftest import RABBITMQ_URL, RabbitAdmin

pytestmark = pytest.mark.timeout(90)


async def test_a_pipeline_passes_results_along_across_queues_and_blocking_steps(
    broker: aqueue.Broker, make_queue_name: Callable[[], str]
) -> None:
    first_queue, second_queue = make_queue_name(), make_queue_name()
    seen: list[tuple[str, object]] = []
    done = asyncio.Event()
    thread_ids: list[int] = []

    @broker.actor(queue_name=first_queue)
    async def double(n: int) -> int:
        return 2 * n

    @broker.actor(queue_name=second_queue)
    def add(offset: int, n: int) -> int:  # blocking: runs in the thread pool
        thread_ids.append(threading.get_ident())
        return offset + n

    @broker.actor(queue_name=first_queue)
    async def tag(label: str) -> str:  # pipe_ignore: its own arguments only
        seen.append(("tag", label))
        return label + "!"

    @broker.actor(queue_name=second_queue)
    async def finish(prefix: str, value: str) -> None:
        seen.append(("finish", f"{prefix}{value}"))
        done.set()

    chain = aqueue.pipeline(
        [
            double.message(3),
            add.message(10),
            tag.message_with_options(args=("x",), pipe_ignore=True),
            finish.message("got "),
        ],
        broker=broker,
    )
    assert len(chain) == 4
    async with Worker(broker, queues=[first_queue, second_queue]):
        await chain.send()
        await asyncio.wait_for(done.wait(), 15)
    assert seen == [("tag", "x"), ("finish", "got x!")]
    assert thread_ids and thread_ids[0] != threading.get_ident()


async def test_the_piped_value_is_the_previous_result(
    broker: aqueue.Broker, queue_name: str
) -> None:
    results: list[int] = []
    done = asyncio.Event()

    @broker.actor(queue_name=queue_name)
    async def double(n: int) -> int:
        return 2 * n

    @broker.actor(queue_name=queue_name)
    def add(offset: int, n: int) -> int:
        return offset + n

    @broker.actor(queue_name=queue_name)
    async def keep(n: int) -> None:
        results.append(n)
        done.set()

    sent_at = time.monotonic()
    async with Worker(broker, queues=[queue_name]):
        # 3 -> 6 -> 16 -> kept; ``|`` joins messages and pipelines too.
        await (
            aqueue.pipeline([double.message(3)], broker=broker) | add.message(10) | keep.message()
        ).send(delay=0.3)
        await asyncio.wait_for(done.wait(), 15)
    assert results == [16]
    assert time.monotonic() - sent_at >= 0.29  # the first step was delayed


async def test_arguments_are_validated_when_the_pipeline_is_built(
    broker: aqueue.Broker, queue_name: str
) -> None:
    @broker.actor(queue_name=queue_name)
    async def fetch(url: str) -> str:
        return url

    @broker.actor(queue_name=queue_name)
    async def parse(strict: bool, text: str) -> int:
        return len(text)

    @broker.actor(queue_name=queue_name)
    async def ping() -> None: ...

    # One argument fewer for a step that receives the result: fine.
    aqueue.pipeline([fetch.message("u"), parse.message(True)], broker=broker)
    with pytest.raises(aqueue.ValidationError, match=r"pipeline step 1 .fetch.: .*missing"):
        aqueue.pipeline([fetch.message(), parse.message(True)], broker=broker)
    with pytest.raises(aqueue.ValidationError, match="missing the argument 'text'"):
        parse.message("yes")  # not a bool: wrong even with a piped argument to come
    with pytest.raises(aqueue.ValidationError, match=r"pipeline step 2 .parse.: .*3 were given"):
        aqueue.pipeline([fetch.message("u"), parse.message(True, "t")], broker=broker)
    with pytest.raises(aqueue.ValidationError, match=r"pipeline step 2 .ping.: .*pipe_ignore"):
        aqueue.pipeline([fetch.message("u"), ping.message()], broker=broker)
    aqueue.pipeline(
        [fetch.message("u"), ping.message_with_options(pipe_ignore=True)], broker=broker
    )
    with pytest.raises(aqueue.ValidationError, match=r"pipeline step 2 .fetch.: .*missing"):
        aqueue.pipeline(
            [fetch.message("u"), fetch.message_with_options(pipe_ignore=True)], broker=broker
        )
    with pytest.raises(aqueue.ValidationError, match="at least one step"):
        aqueue.pipeline([], broker=broker)
    # What sends a message by itself still wants every argument.
    with pytest.raises(aqueue.ValidationError, match="missing"):
        await parse.send(True)  # type: ignore[call-arg]
    with pytest.raises(aqueue.ValidationError, match="missing"):
        await parse.send_many([(True,)])
    with pytest.raises(aqueue.ValidationError, match="missing"):
        broker.schedule(parse, every=60, args=(True,))


async def test_a_step_that_fails_for_good_ends_the_pipeline(
    broker: aqueue.Broker, queue_name: str
) -> None:
    ran: list[str] = []

    @broker.actor(queue_name=queue_name)
    async def start() -> int:
        ran.append("start")
        return 1

    @broker.actor(queue_name=queue_name, max_retries=1, min_backoff=0.01, max_backoff=0.01)
    async def breaks(n: int) -> int:
        ran.append("breaks")
        raise RuntimeError("boom")

    @broker.actor(queue_name=queue_name)
    async def never(n: int) -> None:
        ran.append("never")

    async with Worker(broker, queues=[queue_name]):
        await aqueue.pipeline(
            [start.message(), breaks.message(), never.message()], broker=broker
        ).send()
        deadline = time.monotonic() + 15
        while not await broker.dead_letters(queue_name):
            assert time.monotonic() < deadline, "the failing step was never dead-lettered"
            await asyncio.sleep(0.05)
        await broker.join(queue_name, timeout=10)
    assert ran == ["start", "breaks", "breaks"]
    (letter,) = await broker.dead_letters(queue_name)
    assert letter.message.actor_name == "breaks"
    # The rest of the chain is kept in the dead letter: replaying it resumes the pipeline.
    assert letter.message.options["pipe_target"]["actor_name"] == "never"


async def test_a_result_that_cannot_be_piped_fails_the_step(
    broker: aqueue.Broker, queue_name: str
) -> None:
    @broker.actor(queue_name=queue_name)
    async def opaque() -> object:
        return object()

    @broker.actor(queue_name=queue_name)
    async def after(value: object) -> None: ...

    async with Worker(broker, queues=[queue_name]):
        await aqueue.pipeline([opaque.message(), after.message()], broker=broker).send()
        deadline = time.monotonic() + 15
        while not (letters := await broker.dead_letters(queue_name)):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    assert letters[0].message.actor_name == "opaque"
    assert "cannot be piped to after" in (letters[0].error or "")


async def test_a_pipeline_needs_the_pipelines_middleware(
    make_broker: Callable[..., aqueue.Broker], queue_name: str
) -> None:
    bare = make_broker(middleware=[])

    @bare.actor(queue_name=queue_name)
    async def step() -> None: ...

    with pytest.raises(aqueue.ValidationError, match="Pipelines middleware"):
        aqueue.pipeline([step.message()], broker=bare)


# -- a worker killed between steps ----------------------------------------------------------

KILLED_MODULE = """
import os
import signal

import aqueue
from aqueue.middleware import Middleware

broker = aqueue.RabbitmqBroker()
QUEUE = os.environ["PIPE_QUEUE"]
OUT = os.environ["PIPE_OUT"]


def record(line):
    with open(OUT, "a") as out:
        out.write(f"{line} {os.getpid()}\\n")


class DieAfterPiping(Middleware):
    # Last in the stack: the next step is published and confirmed, the step not acked yet.
    async def after_process_message(self, context):
        marker = OUT + ".killed"
        if context.message.actor_name == "middle" and not os.path.exists(marker):
            open(marker, "w").close()
            record("kill")
            os.kill(os.getpid(), signal.SIGKILL)


broker.add_middleware(DieAfterPiping())


@broker.actor(queue_name=QUEUE)
async def first(n: int) -> int:
    record(f"first {n}")
    return n + 1


@broker.actor(queue_name=QUEUE)
def middle(n: int) -> int:
    record(f"middle {n}")
    return n * 10


@broker.actor(queue_name=QUEUE)
async def last(n: int) -> None:
    record(f"last {n}")
"""


def _start_worker(tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "aqueue", "worker", "piped", "--log-level", "warning"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_a_worker_killed_between_steps_loses_no_step(
    rabbitmq_broker: aqueue.RabbitmqBroker, queue_name: str, tmp_path: Path
) -> None:
    (tmp_path / "piped.py").write_text(KILLED_MODULE)
    out = tmp_path / "out.txt"
    env = {
        **os.environ,
        "AQUEUE_BROKER_URL": RABBITMQ_URL,
        "PIPE_QUEUE": queue_name,
        "PIPE_OUT": str(out),
        "PYTHONPATH": str(tmp_path),
    }

    @rabbitmq_broker.actor(queue_name=queue_name)
    async def first(n: int) -> int:
        raise NotImplementedError  # runs in the worker processes

    @rabbitmq_broker.actor(queue_name=queue_name)
    def middle(n: int) -> int:
        raise NotImplementedError

    @rabbitmq_broker.actor(queue_name=queue_name)
    async def last(n: int) -> None:
        raise NotImplementedError

    def lines() -> list[str]:
        return out.read_text().splitlines() if out.exists() else []

    async def wait_for(text: str, count: int = 1) -> None:
        deadline = time.monotonic() + 30
        while sum(line.startswith(text) for line in lines()) < count:
            assert time.monotonic() < deadline, f"no {count} x {text!r} in {lines()}"
            await asyncio.sleep(0.05)

    victim = _start_worker(tmp_path, env)
    survivor = None
    try:
        await aqueue.pipeline(
            [first.message(1), middle.message(), last.message()], broker=rabbitmq_broker
        ).send()
        await wait_for("kill")
        assert victim.wait(10) == -signal.SIGKILL
        survivor = _start_worker(tmp_path, env)
        await wait_for("middle 2", count=2)  # redelivered: it was not acked
        await wait_for("last 20", count=2)  # published by both runs of the middle step
        await rabbitmq_broker.join(queue_name, timeout=15)
    finally:
        for worker in (victim, survivor):
            if worker is not None and worker.poll() is None:
                worker.kill()
                worker.wait(10)
    steps = [line.rsplit(" ", 1)[0] for line in lines()]
    assert steps[:2] == ["first 1", "middle 2"] and steps.count("kill") == 1, steps
    # The middle step ran again (it was not acked), and published the last step again:
    # a duplicate, never a loss.
    assert steps.count("middle 2") == 2 and steps.count("last 20") >= 2, steps
    assert await rabbitmq_broker.dead_letters(queue_name) == []


# -- with Dramatiq --------------------------------------------------------------------------


async def test_a_dramatiq_pipeline_continues_on_an_aqueue_worker_with_its_units(
    queue_name: str, rabbit: RabbitAdmin
) -> None:
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL, dramatiq_compat=True)
    d_broker = DramatiqBroker(url=RABBITMQ_URL, confirm_delivery=True)
    seen: list[tuple[int, object]] = []
    done = asyncio.Event()

    @broker.actor(queue_name=queue_name, actor_name="double")
    async def double(n: int) -> int:
        return 2 * n

    @broker.actor(queue_name=queue_name, actor_name="show")
    async def show(n: int) -> None:
        seen.append((n, aqueue.current_message().options.get("time_limit")))
        done.set()

    @dramatiq.actor(queue_name=queue_name, actor_name="double", broker=d_broker)
    def d_double(n: int) -> int: ...

    @dramatiq.actor(queue_name=queue_name, actor_name="show", broker=d_broker)
    def d_show(n: int) -> None: ...

    try:
        chain = dramatiq.pipeline(
            [d_double.message(21), d_show.message_with_options(time_limit=5000)],
            broker=d_broker,
        )
        await asyncio.to_thread(chain.run)
        async with Worker(broker, queues=[queue_name]):
            await asyncio.wait_for(done.wait(), 15)
        # Dramatiq's 5000 ms, read as aqueue's seconds on the aqueue worker.
        assert seen == [(42, 5.0)]

        # And the other way: aqueue writes the nested step's durations in milliseconds.
        await aqueue.pipeline(
            [double.message(1), show.message_with_options(time_limit=2.5)], broker=broker
        ).send()
        raw = await rabbit.get(queue_name)
        assert raw is not None
        body = json.loads(raw.body)
        assert body["options"]["pipe_target"]["options"]["time_limit"] == 2500
    finally:
        d_broker.close()
        await broker.close()
        await rabbit.delete(queue_name + ".DQ")


async def test_an_aqueue_pipeline_goes_on_on_a_dramatiq_worker(
    make_queue_name: Callable[[], str], rabbit: RabbitAdmin
) -> None:
    ours, theirs = make_queue_name(), make_queue_name()
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL, dramatiq_compat=True)
    d_broker = DramatiqBroker(url=RABBITMQ_URL, confirm_delivery=True)
    shouted: list[str] = []

    @broker.actor(queue_name=ours)
    async def greet(name: str) -> str:
        return f"hi {name}"

    @broker.actor(queue_name=theirs, actor_name="shout")
    async def shout(text: str) -> None:
        raise NotImplementedError  # only Dramatiq's workers consume its queue

    @dramatiq.actor(queue_name=theirs, actor_name="shout", broker=d_broker)
    def d_shout(text: str) -> None:
        shouted.append(text.upper())

    d_worker = dramatiq.Worker(d_broker, worker_threads=1, worker_timeout=100)
    try:
        await aqueue.pipeline([greet.message("ada"), shout.message()], broker=broker).send()
        d_broker.emit_after("process_boot")
        d_worker.start()
        async with Worker(broker, queues=[ours]):
            deadline = time.monotonic() + 15
            while not shouted:
                assert time.monotonic() < deadline, "Dramatiq never ran the step"
                await asyncio.sleep(0.05)
        assert shouted == ["HI ADA"]
    finally:
        await asyncio.to_thread(d_worker.stop, 5_000)
        d_broker.close()
        await broker.close()
        await rabbit.delete(ours + ".DQ", theirs + ".DQ")
