"""Batched acks and consumers RabbitMQ cancels: regressions found in review."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiormq
import pytest

import aqueue
from aqueue.brokers.rabbitmq import _Acker, _RabbitmqDelivery

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
