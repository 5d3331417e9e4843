"""A stopping worker gives unfinished messages back uncounted; join waits for what comes back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

import aqueue
from aqueue.broker import Delivery
from aqueue.errors import BrokerConnectionError

from .conftest import RABBITMQ_URL, RabbitAdmin


async def reached(predicate: Callable[[], bool], timeout: float) -> bool:
    """Whether ``predicate`` became true within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def test_repeated_graceful_stops_do_not_count_as_redeliveries(
    broker: aqueue.Broker, queue_name: str
) -> None:
    """Five rolling restarts, each holding a running and three prefetched messages."""
    runs: list[tuple[int, dict[str, Any]]] = []
    release = asyncio.Event()

    # max_redeliveries=1: counted graceful requeues would dead-letter by the second stop.
    @broker.actor(queue_name=queue_name, concurrency=1, max_redeliveries=1)
    async def hold(n: int) -> None:
        runs.append((n, dict(aqueue.current_message().options)))
        await release.wait()

    @broker.actor(queue_name=queue_name, concurrency=3)
    async def spare() -> None:  # never sent: only raises the queue's prefetch to 1 + 3
        pass

    for n in range(4):
        await hold.send(n)
    holding = 0  # rounds stopped while holding all four
    for _ in range(5):
        before = len(runs)
        worker = aqueue.Worker(broker, queues=[queue_name], shutdown_timeout=0.1)
        await worker.start()
        # One message runs, the three others wait for hold's only slot.
        holding += await reached(
            lambda: len(runs) > before and broker._in_flight.get(queue_name, 0) == 4,  # noqa: B023
            timeout=4,
        )
        await worker.stop()
    assert [(n, options) for n, options in runs if "redeliveries" in options] == []
    assert await broker.dead_letters(queue_name) == []
    assert holding == 5

    release.set()
    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=30)
    assert {n for n, _ in runs} == {0, 1, 2, 3}
    assert [options for _, options in runs if "redeliveries" in options] == []
    assert await broker.dead_letters(queue_name) == []
    assert await broker.ready_count(queue_name) == 0


async def test_join_waits_for_counted_redeliveries(broker: aqueue.Broker, queue_name: str) -> None:
    """A consumer lost without settling (as in a crash) is still counted, and join waits."""
    done: list[tuple[int, Any]] = []

    @broker.actor(queue_name=queue_name)
    async def task(n: int) -> None:
        done.append((n, aqueue.current_message().options.get("redeliveries")))

    for n in range(10):
        await task.send(n)
    held: list[Delivery] = []

    async def hold(delivery: Delivery) -> None:
        held.append(delivery)

    consumer = await broker.consume(queue_name, prefetch=10, handler=hold)
    assert await reached(lambda: len(held) == 10, timeout=10)
    await consumer.close()  # unsettled: they come back marked redelivered
    started = time.monotonic()
    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=20)
        waited = time.monotonic() - started
        # The redelivery limit counted each and held it back 1 to 2 s; join waited for it.
        assert sorted(done) == [(n, 1) for n in range(10)], f"join returned after {waited:.2f} s"


async def test_a_given_back_message_keeps_its_id_headers_and_body(
    rabbitmq_broker: aqueue.RabbitmqBroker, rabbit: RabbitAdmin, queue_name: str
) -> None:
    broker = rabbitmq_broker
    release = asyncio.Event()
    started = asyncio.Event()

    @broker.actor(queue_name=queue_name)
    async def hold(n: int) -> None:
        started.set()
        await release.wait()

    message = hold.message(7)
    await broker.declare_queue(queue_name)
    await broker.publish(
        queue_name, message.encode(), message_id=message.message_id, headers={"tenant": "acme"}
    )
    worker = aqueue.Worker(broker, queues=[queue_name])
    await worker.start()
    await asyncio.wait_for(started.wait(), 10)
    await worker.stop(timeout=0.1)
    back = await rabbit.get(queue_name)
    assert back is not None
    assert not back.redelivered
    assert back.message_id == message.message_id
    assert back.headers == {"tenant": "acme"}
    assert back.body == message.encode()
    assert back.delivery_mode == 2
    assert await rabbit.get(queue_name) is None  # given back once: the original was acked


async def test_give_back_falls_back_to_requeue_when_it_cannot_publish(
    rabbitmq_broker: aqueue.RabbitmqBroker,
    rabbit: RabbitAdmin,
    queue_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = rabbitmq_broker
    started = asyncio.Event()

    @broker.actor(queue_name=queue_name)
    async def hold(n: int) -> None:
        started.set()
        await asyncio.Event().wait()

    await hold.send(1)
    worker = aqueue.Worker(broker, queues=[queue_name])
    await worker.start()
    await asyncio.wait_for(started.wait(), 10)

    async def unreachable(*args: Any, **kwargs: Any) -> None:
        raise BrokerConnectionError("RabbitMQ is gone")

    monkeypatch.setattr(broker, "publish", unreachable)
    await worker.stop(timeout=0.1)
    back = await rabbit.get(queue_name)
    assert back is not None
    assert back.redelivered  # requeued: a redelivery, as before give_back existed
    assert await rabbit.get(queue_name) is None


async def test_graceful_stops_do_not_use_up_a_quorum_queues_delivery_limit(
    rabbit: RabbitAdmin, queue_name: str
) -> None:
    """RabbitMQ counts requeues of a quorum queue's message; a give-back starts afresh."""
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL, queue_type="quorum", delivery_limit=1)
    runs: list[int] = []
    release = asyncio.Event()

    @broker.actor(queue_name=queue_name, max_redeliveries=None)
    async def hold(n: int) -> None:
        runs.append(n)
        await release.wait()

    try:
        await hold.send(1)
        for round_ in range(1, 4):
            async with aqueue.Worker(broker, queues=[queue_name], shutdown_timeout=0.1):
                assert await reached(lambda: len(runs) == round_, timeout=10)  # noqa: B023
        back = await rabbit.get(queue_name)
        assert back is not None
        assert not back.redelivered
        assert (back.headers or {}).get("x-delivery-count", 0) == 0  # a fresh copy
        assert await rabbit.count(queue_name + ".XQ") == 0
    finally:
        await broker.close()
