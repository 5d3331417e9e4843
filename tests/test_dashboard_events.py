"""The task events middleware: in memory on the in-memory broker, a stream on RabbitMQ."""

from __future__ import annotations

import aio_pika
import pytest

import aqueue
from aqueue.brokers.rabbitmq.events import stream_arguments
from aqueue.middleware import TaskEvents
from aqueue.middleware.events import BATCH_DECODER, EventPublishing

from .conftest import RABBITMQ_URL, RabbitAdmin


async def test_on_the_in_memory_broker_the_batches_stay_on_the_middleware() -> None:
    broker = aqueue.InMemoryBroker()
    events = TaskEvents(flush_interval=0.05)
    broker.add_middleware(events)

    @broker.actor(queue_name="jobs", max_retries=0)
    async def job(n: int) -> None:
        if n < 0:
            raise ValueError(f"negative {n}")

    assert not isinstance(broker, EventPublishing)
    await job.send(1)
    await job.send(-2)
    async with aqueue.Worker(broker, queues=["jobs"]):
        await broker.join("jobs", timeout=5)
    found = [e for batch in events.batches for e in batch.events]
    assert sorted((e.outcome, e.error) for e in found) == [
        ("failed", "negative -2"),
        ("succeeded", None),
    ]
    assert all(batch.queues == ["jobs"] for batch in events.batches)
    assert all(batch.events for batch in events.batches)  # no idle heartbeats kept


async def test_on_rabbitmq_a_batch_goes_to_a_stream_declared_again_if_deleted(
    rabbit: RabbitAdmin, queue_name: str
) -> None:
    stream = f"{queue_name}.events"
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL)
    body = b'{"host": "h", "pid": 1, "at": 0.0}'
    try:
        await broker.publish_events(stream, body, max_age="1h", max_bytes=1_000_000)
        await rabbit.delete(stream)  # behind its back: the next batch declares it again
        await broker.publish_events(stream, body, max_age="1h", max_bytes=1_000_000)
        connection = await aio_pika.connect(RABBITMQ_URL)
        async with connection:
            channel = await connection.channel()
            # Declared with these arguments: the same declare is accepted...
            await channel.declare_queue(
                stream, durable=True, arguments=stream_arguments("1h", 1_000_000)
            )
            # ...and another age refused.
            with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
                await channel.declare_queue(
                    stream, durable=True, arguments=stream_arguments("2h", 1_000_000)
                )
    finally:
        await broker.close()
        await rabbit.delete(stream)
    assert BATCH_DECODER.decode(body).host == "h"
