"""Batched acks and consumers RabbitMQ cancels: regressions found in review."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiormq
import pytest

import aqueue
from aqueue.brokers.rabbitmq import _Acker, _RabbitmqDelivery
from aqueue.brokers.rabbitmq.acker import HEAD_OF_LINE_GRACE

from .conftest import RABBITMQ_URL, RabbitAdmin


@pytest.fixture
async def amqp() -> AsyncIterator[aiormq.abc.AbstractConnection]:
    connection = await aiormq.connect(RABBITMQ_URL)
    yield connection
    await connection.close()


async def _deliveries(
    amqp: aiormq.abc.AbstractConnection, queue_name: str, count: int
) -> tuple[aiormq.abc.AbstractChannel, _Acker, list[_RabbitmqDelivery]]:
    publisher = await amqp.channel()
    await publisher.queue_declare(queue_name, durable=True)
    for i in range(count):
        await publisher.basic_publish(f"m{i}".encode(), routing_key=queue_name)
    channel = await amqp.channel()
    await channel.basic_qos(prefetch_count=count)
    acker = _Acker(channel)
    got: list[_RabbitmqDelivery] = []

    async def on_delivery(message: aiormq.abc.DeliveredMessage) -> None:
        got.append(_RabbitmqDelivery(message, acker))

    consume = await channel.basic_consume(queue_name, on_delivery)
    while len(got) < count:
        await asyncio.sleep(0.01)
    assert consume.consumer_tag is not None
    await channel.basic_cancel(consume.consumer_tag)
    return channel, acker, got


async def test_an_ack_held_behind_a_requeued_delivery_is_sent(
    amqp: aiormq.abc.AbstractConnection, rabbit: RabbitAdmin, queue_name: str
) -> None:
    channel, _acker, (first, second) = await _deliveries(amqp, queue_name, 2)
    await second.ack()  # finished first: waits behind the first delivery
    await asyncio.sleep(0.1)
    await first.requeue()
    await asyncio.sleep(0.3)
    await channel.close()  # anything not acked would come back now
    await asyncio.sleep(0.2)
    assert await rabbit.count(queue_name) == 1  # only the requeued one


async def test_acks_held_behind_a_running_delivery_go_one_by_one_after_the_grace(
    amqp: aiormq.abc.AbstractConnection, rabbit: RabbitAdmin, queue_name: str
) -> None:
    channel, _acker, (_first, *rest) = await _deliveries(amqp, queue_name, 5)
    for delivery in rest:  # finished while the first still runs
        await delivery.ack()
    await asyncio.sleep(HEAD_OF_LINE_GRACE + 0.3)
    await channel.close()  # anything not acked comes back now
    await asyncio.sleep(0.2)
    assert await rabbit.count(queue_name) == 1  # only the one still running


async def test_a_later_multiple_ack_spans_the_acks_sent_alone_without_naming_them(
    amqp: aiormq.abc.AbstractConnection, rabbit: RabbitAdmin, queue_name: str
) -> None:
    channel, _acker, (first, *rest) = await _deliveries(amqp, queue_name, 5)
    for delivery in rest:
        await delivery.ack()
    await asyncio.sleep(HEAD_OF_LINE_GRACE + 0.3)
    await first.ack()
    await asyncio.sleep(0.2)
    assert not channel.is_closed  # naming an acked tag again would have closed it
    await channel.close()
    await asyncio.sleep(0.2)
    assert await rabbit.count(queue_name) == 0


async def test_a_flush_sends_the_acks_held_behind_a_running_delivery(
    amqp: aiormq.abc.AbstractConnection, rabbit: RabbitAdmin, queue_name: str
) -> None:
    channel, acker, (_first, second, third) = await _deliveries(amqp, queue_name, 3)
    await second.ack()
    await third.ack()
    await acker.flush()  # before the grace: a channel about to close
    await channel.close()
    await asyncio.sleep(0.2)
    assert await rabbit.count(queue_name) == 1  # only the one that never finished


async def test_a_long_message_does_not_stall_the_rest_of_its_queue(
    rabbitmq_broker: aqueue.RabbitmqBroker, queue_name: str
) -> None:
    finished: list[float] = []
    slow_done = asyncio.Event()

    @rabbitmq_broker.actor(queue_name=queue_name)
    async def slow() -> None:
        await asyncio.sleep(3)
        slow_done.set()

    @rabbitmq_broker.actor(queue_name=queue_name)
    async def fast(i: int) -> None:
        finished.append(time.monotonic())

    await slow.send()
    await fast.send_many([(i,) for i in range(50)])
    async with aqueue.Worker(rabbitmq_broker, queues=[queue_name], concurrency=4):
        deadline = time.monotonic() + 2.5
        while len(finished) < 50 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        # Without acks for the fast ones (held behind the slow one), the prefetch window
        # fills after a few of them, and the rest waits for the slow message.
        assert len(finished) == 50 and not slow_done.is_set(), len(finished)
        await rabbitmq_broker.join(queue_name, timeout=10)


async def test_acks_reach_rabbitmq_in_order_under_load(
    amqp: aiormq.abc.AbstractConnection, rabbit: RabbitAdmin, queue_name: str
) -> None:
    channel, acker, deliveries = await _deliveries(amqp, queue_name, 500)
    publisher = await amqp.channel()

    async def flood() -> None:
        for _ in range(2000):
            await publisher.basic_publish(b"x", routing_key=queue_name + "-nowhere")

    flooding = asyncio.ensure_future(flood())
    for delivery in deliveries:  # one ack per loop turn while the write queue is full
        await delivery.ack()
        await asyncio.sleep(0)
    await flooding
    await acker.flush()
    await asyncio.sleep(0.3)
    assert not channel.is_closed  # an out-of-order multiple ack would have closed it
    await channel.close()
    assert await rabbit.count(queue_name) == 0


async def test_worker_consumes_again_after_rabbitmq_cancels_its_consumer(
    rabbitmq_broker: aqueue.RabbitmqBroker, rabbit: RabbitAdmin, queue_name: str
) -> None:
    broker = rabbitmq_broker
    done: list[int] = []

    @broker.actor(queue_name=queue_name)
    async def work(n: int) -> None:
        done.append(n)

    async with aqueue.Worker(broker, queues=[queue_name]):
        await work.send(1)
        await broker.join(queue_name, timeout=10)
        await rabbit.delete(queue_name)  # RabbitMQ cancels the consumer
        await asyncio.sleep(1.5)
        await work.send(2)
        await broker.join(queue_name, timeout=10)
    assert done == [1, 2]


async def test_requeue_skips_dead_letters_that_are_not_aqueue_messages(
    rabbitmq_broker: aqueue.RabbitmqBroker, rabbit: RabbitAdmin, queue_name: str
) -> None:
    broker = rabbitmq_broker

    @broker.actor(queue_name=queue_name, max_retries=0)
    async def fails() -> None:
        raise RuntimeError

    await broker.declare_queue(queue_name)
    await rabbit.publish_raw(queue_name + ".XQ", b"not json")  # first in line
    await fails.send()
    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=10)
    assert await broker.requeue_dead_letters(queue_name) == 1
    assert [d.body for d in await broker.dead_letters(queue_name)] == [b"not json"]
