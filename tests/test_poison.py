"""Bodies that blow up the decoder are dead-lettered at once, never requeued in a loop."""

from __future__ import annotations

import asyncio
import time

import aqueue

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
