"""The worker against the real RabbitMQ: running actors, acking, dead-lettering, stopping."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import threading
import time
import uuid
from typing import Any

import msgspec
import pytest

import aqueue

from .conftest import RabbitAdmin


class Point(msgspec.Struct):
    x: int
    y: int


@dataclasses.dataclass
class Order:
    order_id: uuid.UUID
    placed_at: datetime.datetime
    items: list[str]


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def test_async_actor_runs_on_the_event_loop(broker: aqueue.Broker, queue_name: str) -> None:
    seen: list[tuple[int, bool]] = []
    loop_thread = threading.get_ident()

    @broker.actor(queue_name=queue_name)
    async def add(x: int, y: int) -> None:
        seen.append((x + y, threading.get_ident() == loop_thread))

    message = await add.send(1, 2)
    assert isinstance(message, aqueue.Message)
    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=10)
    assert seen == [(3, True)]


async def test_blocking_actor_runs_in_a_thread_not_on_the_loop(
    broker: aqueue.Broker, queue_name: str
) -> None:
    threads: list[int] = []
    loop_thread = threading.get_ident()

    @broker.actor(queue_name=queue_name)
    def blocking(n: int) -> None:
        time.sleep(0.05)
        threads.append(threading.get_ident())

    for i in range(4):
        await blocking.send(i)
    async with aqueue.Worker(broker, queues=[queue_name], threads=4):
        await broker.join(queue_name, timeout=10)
    assert len(threads) == 4
    assert loop_thread not in threads


async def test_loop_keeps_running_while_blocking_actors_sleep(
    broker: aqueue.Broker, queue_name: str
) -> None:
    @broker.actor(queue_name=queue_name)
    def sleeper() -> None:
        time.sleep(1.0)

    for _ in range(2):
        await sleeper.send()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async with aqueue.Worker(broker, queues=[queue_name], threads=2):
        tick_task = asyncio.ensure_future(ticker())
        await broker.join(queue_name, timeout=10)
        tick_task.cancel()
    # About 100 ticks in a second if the loop was free; a blocked loop gives a handful.
    assert ticks > 40


async def test_arguments_are_decoded_to_the_annotated_types(
    broker: aqueue.Broker, queue_name: str
) -> None:
    received: list[Any] = []

    @broker.actor(queue_name=queue_name)
    async def place(
        order: Order,
        where: Point,
        when: datetime.datetime,
        ids: list[uuid.UUID],
        *,
        tags: dict[str, int],
    ) -> None:
        received.extend([order, where, when, ids, tags])

    order = Order(
        uuid.uuid4(), datetime.datetime(2024, 5, 1, 12, tzinfo=datetime.timezone.utc), ["a"]
    )
    when = datetime.datetime.now(datetime.timezone.utc)
    ids = [uuid.uuid4(), uuid.uuid4()]
    await place.send(order, Point(1, 2), when, ids, tags={"a": 1})
    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=10)
    assert received == [order, Point(1, 2), when, ids, {"a": 1}]
    assert isinstance(received[0].order_id, uuid.UUID)


async def test_message_is_acked_only_after_the_actor_finished(
    rabbitmq_broker: aqueue.RabbitmqBroker, rabbit: RabbitAdmin, queue_name: str
) -> None:
    broker = rabbitmq_broker
    started = asyncio.Event()
    release = asyncio.Event()

    @broker.actor(queue_name=queue_name)
    async def slow() -> None:
        started.set()
        await release.wait()

    await slow.send()
    worker = aqueue.Worker(broker, queues=[queue_name])
    await worker.start()
    try:
        await asyncio.wait_for(started.wait(), 10)
        # Running but unacked: another consumer's view of the queue shows it unacknowledged.
        out = await asyncio.to_thread(_rabbitmqctl_queue_counts, queue_name)
        assert out == (0, 1)
        release.set()
        await broker.join(queue_name, timeout=10)
        await wait_until(lambda: _rabbitmqctl_queue_counts(queue_name) == (0, 0))
    finally:
        await worker.stop()


def _rabbitmqctl_queue_counts(queue_name: str) -> tuple[int, int]:
    from .conftest import rabbitmqctl

    for line in rabbitmqctl(
        "list_queues", "name", "messages_ready", "messages_unacknowledged"
    ).splitlines():
        parts = line.split()
        if parts and parts[0] == queue_name:
            return int(parts[1]), int(parts[2])
    raise AssertionError(f"queue {queue_name} not found")


async def test_actor_concurrency_is_respected(broker: aqueue.Broker, queue_name: str) -> None:
    running = 0
    peak = 0

    @broker.actor(queue_name=queue_name, concurrency=3)
    async def limited() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1

    @broker.actor(queue_name=queue_name, concurrency=2)
    def limited_blocking() -> None:
        time.sleep(0.01)

    for _ in range(12):
        await limited.send()
        await limited_blocking.send()
    async with aqueue.Worker(broker, queues=[queue_name], threads=4):
        await broker.join(queue_name, timeout=20)
    assert peak == 3


async def test_failing_actor_is_dead_lettered_with_reason_headers(
    broker: aqueue.Broker, queue_name: str
) -> None:
    @broker.actor(queue_name=queue_name, max_retries=0)
    async def explode(n: int) -> None:
        raise RuntimeError(f"boom {n}")

    sent = await explode.send(7)
    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=10)
    [dead] = await broker.dead_letters(queue_name)
    assert aqueue.Message.decode(dead.body) == sent
    assert dead.message_id == sent.message_id
    headers = dead.headers
    assert headers["x-aqueue-reason"] == "failed"
    assert headers["x-aqueue-actor"] == "explode"
    assert headers["x-aqueue-exception"] == "RuntimeError"
    assert headers["x-aqueue-error"] == "boom 7"
    assert "RuntimeError: boom 7" in str(headers["x-aqueue-traceback"])
    assert await broker.ready_count(queue_name) == 0


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "undecodable"),
        (b"\xff\xfe\x00binary", "undecodable"),
        (b'{"queue_name": "q", "args": []}', "undecodable"),
        (b'["a", "list"]', "undecodable"),
        (
            b'{"queue_name": "q", "actor_name": "nobody", "args": [], "kwargs": {}, "options": {},'
            b' "message_id": "m1", "message_timestamp": 0}',
            "unknown-actor",
        ),
        (
            b'{"queue_name": "q", "actor_name": "typed", "args": ["x"], "kwargs": {},'
            b' "options": {}, "message_id": "m2", "message_timestamp": 0}',
            "invalid-arguments",
        ),
        (
            b'{"queue_name": "q", "actor_name": "typed", "args": [1, 2], "kwargs": {},'
            b' "options": {}, "message_id": "m3", "message_timestamp": 0}',
            "invalid-arguments",
        ),
    ],
)
async def test_bad_bodies_are_dead_lettered_and_the_worker_goes_on(
    rabbitmq_broker: aqueue.RabbitmqBroker,
    rabbit: RabbitAdmin,
    queue_name: str,
    body: bytes,
    reason: str,
) -> None:
    broker = rabbitmq_broker
    done: list[int] = []

    @broker.actor(queue_name=queue_name)
    async def typed(n: int) -> None:
        done.append(n)

    await broker.declare_queue(queue_name)
    await rabbit.publish_raw(queue_name, body, headers={"weird": "header"})
    await typed.send(1)
    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=10)
    assert done == [1]
    dead = await rabbit.get(queue_name + ".XQ")
    assert dead is not None
    assert dead.body == body
    assert dead.headers["x-aqueue-reason"] == reason
    assert await rabbit.get(queue_name + ".XQ") is None


async def test_graceful_stop_lets_running_messages_finish(
    broker: aqueue.Broker, queue_name: str
) -> None:
    finished: list[int] = []

    @broker.actor(queue_name=queue_name, concurrency=2)
    async def slow(n: int) -> None:
        await asyncio.sleep(0.5)
        finished.append(n)

    for i in range(6):
        await slow.send(i)
    worker = aqueue.Worker(broker, queues=[queue_name])
    await worker.start()
    await wait_until(lambda: broker._in_flight.get(queue_name, 0) == 2)
    await worker.stop(timeout=5)
    assert sorted(finished) == [0, 1]
    # The rest was never started and is still in the queue.
    assert await broker.ready_count(queue_name) == 4


async def test_stop_requeues_what_does_not_finish_in_time(
    broker: aqueue.Broker, queue_name: str
) -> None:
    calls: list[str] = []

    @broker.actor(queue_name=queue_name)
    async def forever(tag: str) -> None:
        calls.append(tag)
        await asyncio.sleep(3600)

    @broker.actor(queue_name=queue_name, concurrency=1)
    def stuck(tag: str) -> None:
        calls.append(tag)
        time.sleep(1.5)

    await forever.send("async")
    await stuck.send("thread")
    worker = aqueue.Worker(broker, queues=[queue_name], threads=1)
    await worker.start()
    await wait_until(lambda: len(calls) == 2)
    started = time.monotonic()
    await worker.stop(timeout=0.2)
    assert time.monotonic() - started < 3
    assert await broker.ready_count(queue_name) == 2


async def test_blocking_messages_waiting_for_a_thread_are_requeued_at_once_on_stop(
    broker: aqueue.Broker, queue_name: str
) -> None:
    started: list[int] = []

    @broker.actor(queue_name=queue_name, concurrency=4)
    def busy(n: int) -> None:
        started.append(n)
        time.sleep(0.5)

    @broker.actor(queue_name=queue_name, concurrency=4)
    def other(n: int) -> None:
        started.append(n)
        time.sleep(0.5)

    for i in range(4):
        await busy.send(i)
        await other.send(i)
    worker = aqueue.Worker(broker, queues=[queue_name], threads=2)
    await worker.start()
    # Blocking actors' prefetch is capped at the thread count: 2 + 2, of which 2 run.
    await wait_until(lambda: broker._in_flight.get(queue_name, 0) == 4)
    stop_started = time.monotonic()
    await worker.stop(timeout=10)
    assert time.monotonic() - stop_started < 2
    assert len(started) == 2
    assert await broker.ready_count(queue_name) == 6


async def test_worker_without_actors_or_with_unknown_queue_refuses_to_start(
    broker: aqueue.Broker,
) -> None:
    with pytest.raises(aqueue.WorkerError, match="no actors"):
        await aqueue.Worker(broker).start()

    @broker.actor(queue_name="somewhere")
    async def task() -> None: ...

    with pytest.raises(aqueue.WorkerError, match="no actor uses queue elsewhere"):
        await aqueue.Worker(broker, queues=["elsewhere"]).start()


async def test_join_times_out_with_builtin_timeout_error(
    broker: aqueue.Broker, queue_name: str
) -> None:
    @broker.actor(queue_name=queue_name)
    async def never_consumed() -> None: ...

    await never_consumed.send()
    with pytest.raises(TimeoutError):
        await broker.join(queue_name, timeout=0.2)


async def test_send_many_validates_everything_first_then_sends_all(
    broker: aqueue.Broker, queue_name: str
) -> None:
    seen: list[tuple[int, int]] = []

    @broker.actor(queue_name=queue_name)
    async def area(width: int, height: int = 1) -> None:
        seen.append((width, height))

    await broker.declare_queue(queue_name)
    with pytest.raises(aqueue.ValidationError, match="width"):
        await area.send_many([(1, 2), ("wide", 3)])
    assert await broker.ready_count(queue_name) == 0

    messages = await area.send_many([(i, 2) for i in range(100)] + [{"width": 7}])
    assert len({m.message_id for m in messages}) == 101
    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=20)
    assert sorted(seen) == sorted([(i, 2) for i in range(100)] + [(7, 1)])
    assert await area.send_many([]) == []
