"""Faults that must neither loop nor leave a worker stuck: poison bodies, queues that vanish."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

import aqueue

from ._proxy import FaultProxy
from .conftest import RabbitAdmin


def nested_body(depth: int, *, where: str) -> bytes:
    deep = b"[" * depth + b"]" * depth
    args = b"[" + deep + b"]" if where == "args" else b"[]"
    options = b'{"x": ' + deep + b"}" if where == "options" else b"{}"
    return (
        b'{"queue_name":"q","actor_name":"task","args":' + args + b',"kwargs":{},'
        b'"options":' + options + b',"message_id":"poison-' + where.encode() + b'",'
        b'"message_timestamp":1}'
    )


async def test_a_deeply_nested_body_is_undecodable_and_dead_lettered_once(
    rabbitmq_broker: aqueue.RabbitmqBroker, rabbit: RabbitAdmin, queue_name: str
) -> None:
    broker = rabbitmq_broker
    ran: list[int] = []

    @broker.actor(queue_name=queue_name)
    async def task(n: int) -> None:
        ran.append(n)

    await broker.declare_queue(queue_name)
    for where in ("args", "options"):
        body = nested_body(1000, where=where).replace(b'"q"', f'"{queue_name}"'.encode())
        assert len(body) < 3000
        await rabbit.publish_raw(queue_name, body)
    await task.send(1)
    started = time.monotonic()
    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=10)
        await asyncio.sleep(0.3)  # a requeue loop would show up as redeliveries meanwhile
    assert time.monotonic() - started < 5
    assert ran == [1]  # the healthy message ran, the worker kept consuming
    letters = await broker.dead_letters(queue_name)
    assert sorted(letter.reason for letter in letters) == ["undecodable", "undecodable"]
    assert all("RecursionError" in (letter.error or "") for letter in letters)
    assert await rabbit.count(queue_name) == 0


async def test_a_queue_deleted_while_consuming_keeps_the_channel_and_its_running_actors(
    rabbitmq_broker: aqueue.RabbitmqBroker,
    rabbit: RabbitAdmin,
    queue_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = rabbitmq_broker
    finished: list[int] = []
    cancelled: list[int] = []

    @broker.actor(queue_name=queue_name, concurrency=20)
    async def slow(n: int) -> None:
        try:
            await asyncio.sleep(2.0 if n < 20 else 0.01)
        except asyncio.CancelledError:
            cancelled.append(n)
            raise
        finished.append(n)

    await asyncio.gather(*(slow.send(i) for i in range(20)))
    async with aqueue.Worker(broker, queues=[queue_name]):
        deadline = time.monotonic() + 10
        while broker._in_flight.get(queue_name, 0) < 20:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await rabbit.delete(queue_name)  # RabbitMQ cancels the consumer
        # The worker declares the queue again and consumes it; new work runs.
        deadline = time.monotonic() + 20
        while True:
            info = await broker.queue_info(queue_name)
            if info is not None and info.consumers == 1:
                break
            assert time.monotonic() < deadline, "the queue was not consumed again"
            await asyncio.sleep(0.1)
        await asyncio.gather(*(slow.send(i) for i in range(20, 40)))
        deadline = time.monotonic() + 20
        while len(finished) < 40:
            assert time.monotonic() < deadline, (sorted(finished), cancelled)
            await asyncio.sleep(0.05)
    assert cancelled == []
    assert sorted(finished) == list(range(40))
    assert "channel of queue" not in caplog.text  # the channel never closed


async def test_a_queue_missing_at_reconnect_is_declared_and_consumed_again(
    rabbit: RabbitAdmin, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await FaultProxy("127.0.0.1", 5672).start()
    broker = aqueue.RabbitmqBroker(proxy.url(), reconnect_interval=0.2)
    done: list[int] = []

    @broker.actor(queue_name=queue_name)
    async def task(n: int) -> None:
        done.append(n)

    try:
        async with aqueue.Worker(broker, queues=[queue_name]):
            await task.send(1)
            await broker.join(queue_name, timeout=10)
            proxy.refusing = True
            proxy.reset()  # the worker is disconnected...
            await rabbit.delete(queue_name)  # ...while its queue goes away (a node rebuilt)
            await asyncio.sleep(1.0)
            proxy.refusing = False
            deadline = time.monotonic() + 30
            while True:
                info = await broker.queue_info(queue_name)
                if info is not None and info.consumers == 1:
                    break
                assert time.monotonic() < deadline, "the worker never consumed its queue again"
                await asyncio.sleep(0.1)
            await task.send(2)
            await broker.join(queue_name, timeout=10)
        assert done == [1, 2]
    finally:
        await broker.close()
        await proxy.close()


async def test_each_processed_message_is_one_debug_line_and_nothing_at_info(
    rabbitmq_broker: aqueue.RabbitmqBroker, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = rabbitmq_broker

    @broker.actor(queue_name=queue_name, max_retries=0)
    async def task(n: int) -> None:
        if n == 2:
            raise ValueError("two")

    for n in (1, 2):
        await task.send(n)
    caplog.set_level("DEBUG", logger="aqueue.worker")
    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=10)
    lines = [
        r for r in caplog.records if r.name == "aqueue.worker" and "of actor task" in r.message
    ]
    assert len(lines) == 2 and all(r.levelname == "DEBUG" for r in lines)
    outcomes = sorted(
        re.sub(r".* of actor task (.*) in [0-9.]+ ms$", r"\1", r.message) for r in lines
    )
    assert outcomes == ["failed, dead-lettered", "succeeded"]
    assert all(r.message.endswith(" ms") for r in lines)
