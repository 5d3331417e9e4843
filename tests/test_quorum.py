"""Quorum queues: declared with at-least-once dead-lettering, delays and a delivery limit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

import aqueue

from .conftest import RABBITMQ_URL, RabbitAdmin, rabbitmqctl


@pytest.fixture
async def quorum_broker() -> AsyncIterator[aqueue.RabbitmqBroker]:
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL, queue_type="quorum", delivery_limit=2)
    try:
        yield broker
    finally:
        await broker.close()


def _queue_rows(*names: str) -> dict[str, str]:
    out = rabbitmqctl("list_queues", "name", "type", "arguments")
    rows = {line.split("\t")[0]: line for line in out.splitlines() if line}
    return {name: rows[name] for name in names}


async def test_quorum_queues_are_declared_with_at_least_once_dead_lettering(
    quorum_broker: aqueue.RabbitmqBroker, queue_name: str
) -> None:
    done: list[int] = []

    @quorum_broker.actor(queue_name=queue_name)
    async def work(n: int) -> None:
        done.append(n)

    await work.send(1)
    await work.send_with_options(args=(2,), delay=0.2)
    async with aqueue.Worker(quorum_broker, queues=[queue_name]):
        await asyncio.sleep(0.4)
        await quorum_broker.join(queue_name, timeout=10)
    assert sorted(done) == [1, 2]
    rows = await asyncio.to_thread(_queue_rows, queue_name, queue_name + ".XQ", "aqueue.qdelay.07")
    for row in rows.values():
        assert row.split("\t")[1] == "quorum"
    for name in (queue_name, "aqueue.qdelay.07"):
        assert '{"x-dead-letter-strategy","at-least-once"}' in rows[name]
        assert '{"x-overflow","reject-publish"}' in rows[name]
    assert '{"x-delivery-limit",2}' in rows[queue_name]


async def test_failures_retry_and_dead_letter_through_quorum_queues(
    quorum_broker: aqueue.RabbitmqBroker, queue_name: str
) -> None:
    attempts = 0

    @quorum_broker.actor(queue_name=queue_name, max_retries=2, min_backoff=0.05)
    async def fails() -> None:
        nonlocal attempts
        attempts += 1
        raise RuntimeError("still broken")

    await fails.send()
    async with aqueue.Worker(quorum_broker, queues=[queue_name]):
        await quorum_broker.join(queue_name, timeout=10)
    assert attempts == 3
    [letter] = await quorum_broker.dead_letters(queue_name)
    assert letter.reason == "failed"
    assert letter.retries == 2


async def test_rabbitmq_dead_letters_a_message_past_the_delivery_limit(
    quorum_broker: aqueue.RabbitmqBroker, rabbit: RabbitAdmin, queue_name: str
) -> None:
    @quorum_broker.actor(queue_name=queue_name)
    async def never_finishes() -> None: ...

    await never_finishes.send()
    # A consumer that dies before acking, again and again: requeued each time.
    async with rabbit.connection.channel() as channel:
        queue = await channel.get_queue(queue_name)
        for _ in range(3):
            message = await queue.get(timeout=5)
            await message.nack(requeue=True)
        await asyncio.sleep(0.2)
        assert await queue.get(fail=False) is None
    deadline = time.monotonic() + 5
    while not await quorum_broker.dead_letters(queue_name):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    [letter] = await quorum_broker.dead_letters(queue_name)
    assert letter.reason == "delivery_limit"


async def test_queue_type_per_queue_and_a_clear_error_on_a_type_clash(
    make_queue_name: Callable[[], str],
) -> None:
    classic, quorum = make_queue_name(), make_queue_name()
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL, queue_types={quorum: "quorum"})
    clash = aqueue.RabbitmqBroker(RABBITMQ_URL, queue_type="quorum")
    try:
        await broker.declare_queue(classic)
        await broker.declare_queue(quorum)
        rows = await asyncio.to_thread(_queue_rows, classic, quorum)
        assert rows[classic].split("\t")[1] == "classic"
        assert rows[quorum].split("\t")[1] == "quorum"
        with pytest.raises(aqueue.BrokerError, match="exists with other arguments"):
            await clash.declare_queue(classic)
    finally:
        await broker.close()
        await clash.close()


def test_unknown_queue_types_are_refused() -> None:
    with pytest.raises(ValueError, match="classic or quorum"):
        aqueue.RabbitmqBroker(RABBITMQ_URL, queue_type="stream")  # type: ignore[arg-type]
