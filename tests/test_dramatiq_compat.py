"""Sharing live queues with the real dramatiq package (2.x) on the real RabbitMQ."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

import dramatiq
import pika
import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker as DramatiqBroker

import aqueue
from aqueue import DeadLetter
from aqueue.brokers.rabbitmq.dramatiq_compat import (
    NO_LIMIT_MS,
    enable_dramatiq_compat,
    from_wire,
    to_wire,
)

from .conftest import RABBITMQ_URL, RabbitAdmin

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def compat_broker(
    queue_name: str, rabbit: RabbitAdmin
) -> AsyncIterator[aqueue.RabbitmqBroker]:
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL)
    enable_dramatiq_compat(broker)
    try:
        yield broker
    finally:
        await broker.close()
        await rabbit.delete(queue_name + ".DQ")


@pytest.fixture
def dramatiq_broker(compat_broker: aqueue.RabbitmqBroker) -> Iterator[DramatiqBroker]:
    # After compat_broker, so that it is closed first and the .DQ deleted last.
    broker = DramatiqBroker(url=RABBITMQ_URL, confirm_delivery=True)
    try:
        yield broker
    finally:
        broker.close()


class DramatiqWorker:
    """A real Dramatiq worker in this process's threads."""

    def __init__(self, broker: DramatiqBroker) -> None:
        self.broker = broker
        self.worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)

    def __enter__(self) -> DramatiqWorker:
        # What the dramatiq command does in each process: it starts TimeLimit's monitor.
        self.broker.emit_after("process_boot")
        self.worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.worker.stop(timeout=5_000)


async def eventually(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def dead_letters_of(broker: aqueue.RabbitmqBroker, queue_name: str) -> list[DeadLetter]:
    deadline = time.monotonic() + 15
    while not (letters := await broker.dead_letters(queue_name)):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)
    return letters


# -- declarations ---------------------------------------------------------------------------


async def test_compat_worker_runs_plain_and_delayed_messages_of_dramatiq_that_declared_first(
    compat_broker: aqueue.RabbitmqBroker, dramatiq_broker: DramatiqBroker, queue_name: str
) -> None:
    @dramatiq.actor(queue_name=queue_name, actor_name="add", broker=dramatiq_broker)
    def d_add(n: int) -> None: ...

    sent_at = time.time()
    await asyncio.to_thread(d_add.send, 1)  # declares q, q.DQ and q.XQ Dramatiq's way
    await asyncio.to_thread(d_add.send_with_options, args=(2,), delay=1000)

    calls: list[tuple[int, float]] = []

    @compat_broker.actor(queue_name=queue_name, actor_name="add")
    async def add(n: int) -> None:
        calls.append((n, time.time()))

    async with aqueue.Worker(compat_broker, queues=[queue_name]):
        await eventually(lambda: len(calls) == 2)
    assert sorted(n for n, _ in calls) == [1, 2]
    delayed_at = dict(calls)[2]
    assert 0.95 <= delayed_at - sent_at < 5, "the .DQ message runs at its eta, not before"


async def test_dramatiq_worker_runs_messages_of_a_compat_broker_that_declared_first(
    compat_broker: aqueue.RabbitmqBroker, dramatiq_broker: DramatiqBroker, queue_name: str
) -> None:
    @compat_broker.actor(queue_name=queue_name, actor_name="add")
    async def add(n: int) -> None: ...

    sent_at = time.time()
    await add.send(1)  # declares q, q.DQ and q.XQ first
    await add.send_with_options(args=(2,), delay=1.0)

    calls: list[tuple[int, float]] = []

    @dramatiq.actor(queue_name=queue_name, actor_name="add", broker=dramatiq_broker)
    def d_add(n: int) -> None:
        calls.append((n, time.time()))

    with DramatiqWorker(dramatiq_broker):
        await eventually(lambda: len(calls) == 2)
        await asyncio.to_thread(d_add.send, 3)  # and a Dramatiq producer too
        await eventually(lambda: len(calls) == 3)
    assert sorted(n for n, _ in calls) == [1, 2, 3]
    assert dict(calls)[2] - sent_at >= 0.95


async def test_without_compat_a_dramatiq_queue_is_one_clear_error(
    dramatiq_broker: DramatiqBroker, queue_name: str
) -> None:
    await asyncio.to_thread(dramatiq_broker.declare_queue, queue_name, ensure=True)
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL)
    try:
        with pytest.raises(aqueue.BrokerError) as caught:
            await broker.declare_queue(queue_name)
    finally:
        await broker.close()
    text = str(caught.value)
    assert "\n" not in text
    assert f"'{queue_name}.XQ'" in text
    assert "x-message-ttl='604800000'" in text
    assert "x-message-ttl=none" in text
    assert "dramatiq_compat=True" in text


async def test_compat_broker_adopts_a_queue_dramatiq_declared_with_a_max_priority(
    compat_broker: aqueue.RabbitmqBroker, queue_name: str
) -> None:
    prioritized = DramatiqBroker(url=RABBITMQ_URL, max_priority=5)
    try:
        await asyncio.to_thread(prioritized.declare_queue, queue_name, ensure=True)
        await compat_broker.declare_queue(queue_name)  # no PRECONDITION_FAILED
        calls: list[int] = []

        @compat_broker.actor(queue_name=queue_name)
        async def record(n: int) -> None:
            calls.append(n)

        await record.send(1)
        async with aqueue.Worker(compat_broker, queues=[queue_name]):
            await eventually(lambda: calls == [1])
    finally:
        prioritized.close()


# -- units ----------------------------------------------------------------------------------


async def test_dramatiq_milliseconds_are_read_as_milliseconds_by_a_compat_worker(
    compat_broker: aqueue.RabbitmqBroker, dramatiq_broker: DramatiqBroker, queue_name: str
) -> None:
    @dramatiq.actor(queue_name=queue_name, actor_name="flaky", broker=dramatiq_broker)
    def d_flaky(n: int) -> None: ...

    # min_backoff=100 ms; max_retries=None is "no limit" in Dramatiq, not a dead letter.
    await asyncio.to_thread(
        d_flaky.send_with_options, args=(1,), min_backoff=100, max_backoff=200, max_retries=None
    )
    calls: list[float] = []

    @compat_broker.actor(queue_name=queue_name, actor_name="flaky", max_retries=0)
    async def flaky(n: int) -> None:
        calls.append(time.time())
        if len(calls) < 3:
            raise RuntimeError("not yet")

    async with aqueue.Worker(compat_broker, queues=[queue_name]):
        await eventually(lambda: len(calls) == 3, timeout=10)
    assert calls[-1] - calls[0] < 3, "100 ms, not 100 s"
    assert await compat_broker.dead_letters(queue_name) == []


async def test_compat_seconds_are_read_as_seconds_by_a_dramatiq_worker(
    compat_broker: aqueue.RabbitmqBroker, dramatiq_broker: DramatiqBroker, queue_name: str
) -> None:
    @compat_broker.actor(queue_name=queue_name, actor_name="slow")
    def slow() -> None: ...

    await slow.send_with_options(time_limit=5)  # 5 s, written as 5000 ms
    done: list[str] = []

    @dramatiq.actor(queue_name=queue_name, actor_name="slow", broker=dramatiq_broker, max_retries=0)
    def d_slow() -> None:
        for _ in range(30):  # 1.5 s: past Dramatiq's 1 s time-limit check
            time.sleep(0.05)
        done.append("ok")

    with DramatiqWorker(dramatiq_broker):
        await eventually(lambda: done == ["ok"])


# -- option values --------------------------------------------------------------------------


async def test_dramatiq_none_options_mean_the_actors_values_on_a_compat_worker(
    compat_broker: aqueue.RabbitmqBroker, dramatiq_broker: DramatiqBroker, queue_name: str
) -> None:
    @dramatiq.actor(queue_name=queue_name, actor_name="flaky", broker=dramatiq_broker)
    def d_flaky() -> None: ...

    # All "unset" in Dramatiq; delayed, so that it goes through .DQ and the mover too.
    unset = dict.fromkeys(
        ["time_limit", "max_age", "min_backoff", "max_backoff", "throws", "retry_when"]
    )
    await asyncio.to_thread(
        d_flaky.send_with_options,
        delay=100,
        on_success=None,
        max_retries=None,  # no limit, in both
        **unset,
    )
    calls: list[float] = []
    done: list[str] = []

    @compat_broker.actor(queue_name=queue_name, actor_name="done")
    async def finished(message: object, result: object) -> None:
        done.append("done")

    @compat_broker.actor(
        queue_name=queue_name,
        actor_name="flaky",
        time_limit=0.3,
        min_backoff=0.01,
        max_backoff=0.02,
        max_retries=0,
        on_success="done",
    )
    async def flaky() -> None:
        calls.append(time.time())
        if len(calls) == 1:
            await asyncio.sleep(10)  # the actor's 0.3 s time limit, not "no limit"

    async with aqueue.Worker(compat_broker, queues=[queue_name]):
        await eventually(lambda: done == ["done"], timeout=10)
    assert len(calls) == 2
    assert calls[1] - calls[0] < 2, "stopped by the actor's time_limit, retried at its backoff"
    assert await compat_broker.dead_letters(queue_name) == []


async def test_dramatiq_max_age_none_keeps_the_actors_max_age(
    compat_broker: aqueue.RabbitmqBroker, dramatiq_broker: DramatiqBroker, queue_name: str
) -> None:
    @dramatiq.actor(queue_name=queue_name, actor_name="stale", broker=dramatiq_broker)
    def d_stale() -> None: ...

    message = await asyncio.to_thread(d_stale.send_with_options, max_age=None)
    await asyncio.sleep(0.2)
    calls: list[str] = []

    @compat_broker.actor(queue_name=queue_name, actor_name="stale", max_age=0.05)
    async def stale() -> None:
        calls.append("ran")

    async with aqueue.Worker(compat_broker, queues=[queue_name]):
        [letter] = await dead_letters_of(compat_broker, queue_name)
    assert (letter.message_id, letter.reason) == (message.message_id, "max-age-exceeded")
    assert calls == []


async def test_dramatiq_pipeline_steps_falsy_pipe_ignore_keeps_the_actors(
    compat_broker: aqueue.RabbitmqBroker,
    dramatiq_broker: DramatiqBroker,
    queue_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    @dramatiq.actor(queue_name=queue_name, actor_name="first", broker=dramatiq_broker)
    def d_first() -> int: ...

    @dramatiq.actor(queue_name=queue_name, actor_name="second", broker=dramatiq_broker)
    def d_second() -> None: ...

    chain = dramatiq.pipeline(
        [
            d_first.message(),
            d_second.message_with_options(pipe_ignore=False, time_limit=None, delay=50),
        ],
        broker=dramatiq_broker,
    )
    await asyncio.to_thread(chain.run)
    ran: list[object] = []

    @compat_broker.actor(queue_name=queue_name, actor_name="first")
    async def first() -> int:
        return 1

    @compat_broker.actor(queue_name=queue_name, actor_name="second", pipe_ignore=True)
    async def second() -> None:  # takes no result: pipe_ignore=False is unset in Dramatiq
        ran.append(aqueue.current_message().options.get("time_limit", "unset"))

    async with aqueue.Worker(compat_broker, queues=[queue_name]):
        await eventually(lambda: ran == ["unset"])
    assert await compat_broker.dead_letters(queue_name) == []
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "first" in warning and "pipe_target delay=50" in warning, warning


async def test_options_aqueue_cannot_honour_are_ignored_with_a_warning_once_per_actor(
    compat_broker: aqueue.RabbitmqBroker,
    dramatiq_broker: DramatiqBroker,
    queue_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    @dramatiq.actor(queue_name=queue_name, actor_name="job", broker=dramatiq_broker)
    def d_job(n: int) -> None: ...

    for n in range(3):
        await asyncio.to_thread(
            d_job.send_with_options,
            args=(n,),
            on_retry_exhausted="give_up",
            notify_shutdown=True,
            some_option_of_their_own=n,
        )
    seen: list[int] = []

    @compat_broker.actor(queue_name=queue_name, actor_name="job")
    async def job(n: int) -> None:
        seen.append(n)

    caplog.set_level(logging.DEBUG, logger="aqueue.brokers.rabbitmq")
    async with aqueue.Worker(compat_broker, queues=[queue_name]):
        await eventually(lambda: sorted(seen) == [0, 1, 2])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert any("on_retry_exhausted='give_up'" in w and "job" in w for w in warnings)
    assert any("notify_shutdown=True" in w for w in warnings)
    ignored = [r for r in caplog.records if "some_option_of_their_own" in r.getMessage()]
    assert len(ignored) == 3 and all(r.levelno == logging.DEBUG for r in ignored)
    assert await compat_broker.dead_letters(queue_name) == []


@pytest.mark.parametrize(
    "options",
    [{"time_limit": -5}, {"min_backoff": "soon"}, {"max_retries": -1}, {"throws": ["E"]}],
    ids=["negative-time-limit", "text-backoff", "negative-retries", "throws"],
)
async def test_a_compat_worker_still_dead_letters_bad_option_values(
    compat_broker: aqueue.RabbitmqBroker,
    dramatiq_broker: DramatiqBroker,
    queue_name: str,
    options: dict[str, object],
) -> None:
    @dramatiq.actor(queue_name=queue_name, actor_name="job", broker=dramatiq_broker)
    def d_job() -> None: ...

    await asyncio.to_thread(d_job.send_with_options, **options)
    calls: list[str] = []

    @compat_broker.actor(queue_name=queue_name, actor_name="job")
    async def job() -> None:
        calls.append("ran")

    async with aqueue.Worker(compat_broker, queues=[queue_name]):
        [letter] = await dead_letters_of(compat_broker, queue_name)
    assert letter.reason == "invalid-arguments"
    assert calls == []


async def test_without_compat_none_keeps_aqueues_meaning(
    rabbitmq_broker: aqueue.RabbitmqBroker, queue_name: str, rabbit: RabbitAdmin
) -> None:
    calls: list[str] = []

    @rabbitmq_broker.actor(queue_name=queue_name, time_limit=0.1)
    async def slow(n: int) -> None:
        await asyncio.sleep(0.3)
        calls.append("done")

    await slow.send_with_options(args=(1,), time_limit=None)  # no limit
    body = slow.message(2).encode()  # and one that only Dramatiq could mean as "unset"
    raw = json.loads(body)
    raw["options"] = {"min_backoff": None}
    await rabbit.publish_raw(queue_name, json.dumps(raw).encode())
    async with aqueue.Worker(rabbitmq_broker, queues=[queue_name]):
        [letter] = await dead_letters_of(rabbitmq_broker, queue_name)
        await eventually(lambda: calls == ["done"])
    assert letter.reason == "invalid-arguments"


def test_aqueues_own_none_time_limit_survives_the_wire_and_dramatiqs_unset_does_not() -> None:
    options: dict[str, object] = {"time_limit": None, "max_age": None, "min_backoff": 1.5}
    to_wire(options)
    assert options == {"time_limit": NO_LIMIT_MS, "max_age": NO_LIMIT_MS, "min_backoff": 1500}
    from_wire(options)
    assert options == {"time_limit": None, "max_age": None, "min_backoff": 1.5}
    dramatiq_unset = {
        "time_limit": 0,
        "on_success": None,
        "min_backoff": None,
        "max_retries": None,
        "retry_when": None,
        "pipe_target": {"actor_name": "b", "options": {"pipe_ignore": False, "max_age": 2000}},
    }
    from_wire(dramatiq_unset)
    assert dramatiq_unset == {
        "max_retries": None,
        "pipe_target": {"actor_name": "b", "options": {"max_age": 2.0}},
    }


# -- dead letters ---------------------------------------------------------------------------


async def test_dead_letter_of_a_dramatiq_message_keeps_its_id_and_headers(
    compat_broker: aqueue.RabbitmqBroker,
    dramatiq_broker: DramatiqBroker,
    queue_name: str,
    rabbit: RabbitAdmin,
) -> None:
    @dramatiq.actor(queue_name=queue_name, actor_name="fails", broker=dramatiq_broker)
    def d_fails() -> None: ...

    message = d_fails.message_with_options(max_retries=0)

    def publish() -> None:
        # As Dramatiq publishes (no AMQP message id), with a header of the sender's own.
        dramatiq_broker.declare_queue(queue_name, ensure=True)
        properties = pika.BasicProperties(delivery_mode=2, headers={"x-trace": "abc"})
        dramatiq_broker.channel.basic_publish("", queue_name, message.encode(), properties)

    await asyncio.to_thread(publish)

    @compat_broker.actor(queue_name=queue_name, actor_name="fails")
    async def fails() -> None:
        raise RuntimeError("boom")

    async with aqueue.Worker(compat_broker, queues=[queue_name]):
        deadline = time.monotonic() + 15
        while await rabbit.count(queue_name + ".XQ") == 0:
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.05)
    [letter] = await compat_broker.dead_letters(queue_name)
    assert letter.message_id == message.message_id
    assert letter.headers["x-trace"] == b"abc" or letter.headers["x-trace"] == "abc"
    assert letter.reason == "failed"


# -- a mixed fleet --------------------------------------------------------------------------


async def test_mixed_fleet_with_both_producers_runs_every_message(
    compat_broker: aqueue.RabbitmqBroker, dramatiq_broker: DramatiqBroker, queue_name: str
) -> None:
    seen: set[int] = set()
    lock = threading.Lock()
    by: dict[str, int] = {"aqueue": 0, "dramatiq": 0}

    @dramatiq.actor(queue_name=queue_name, actor_name="job", broker=dramatiq_broker)
    def d_job(n: int) -> None:
        with lock:
            seen.add(n)
            by["dramatiq"] += 1
        time.sleep(0.002)

    @compat_broker.actor(queue_name=queue_name, actor_name="job")
    async def job(n: int) -> None:
        seen.add(n)
        by["aqueue"] += 1
        await asyncio.sleep(0.002)

    total = 400

    def send_from_dramatiq() -> None:
        for n in range(0, total, 2):
            if n % 20 == 0:
                d_job.send_with_options(args=(n,), delay=200)
            else:
                d_job.send(n)

    with DramatiqWorker(dramatiq_broker):
        async with aqueue.Worker(compat_broker, queues=[queue_name], concurrency=4):
            await asyncio.gather(
                asyncio.to_thread(send_from_dramatiq),
                *(job.send(n) for n in range(1, total, 2)),
            )
            await eventually(lambda: len(seen) == total, timeout=30)
    assert seen == set(range(total))
    assert by["aqueue"] > 0 and by["dramatiq"] > 0
