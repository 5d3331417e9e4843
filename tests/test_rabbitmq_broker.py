"""RabbitmqBroker: one connection, confirmed and mandatory publishing, topology, errors."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

import aqueue
from aqueue.brokers.rabbitmq import DEFAULT_URL

from .conftest import RABBITMQ_URL, RabbitAdmin, connections_of_pid, rabbitmqctl


def test_url_defaults_to_environment_then_localhost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AQUEUE_BROKER_URL", raising=False)
    assert aqueue.RabbitmqBroker().url == DEFAULT_URL == "amqp://guest:guest@127.0.0.1:5672/"
    monkeypatch.setenv("AQUEUE_BROKER_URL", "amqp://u:p@rabbit.example:5673/vh")
    assert aqueue.RabbitmqBroker().url == "amqp://u:p@rabbit.example:5673/vh"
    assert aqueue.RabbitmqBroker("amqp://x@h/").url == "amqp://x@h/"


def test_repr_and_errors_never_show_the_password() -> None:
    broker = aqueue.RabbitmqBroker("amqp://user:s3cret@host:5672/")
    assert "s3cret" not in repr(broker)
    with pytest.raises(ValueError, match="invalid broker URL") as info:
        aqueue.RabbitmqBroker("http://user:s3cret@host/")
    assert "s3cret" not in str(info.value)


async def test_unreachable_broker_fails_with_a_clear_error_after_bounded_retries() -> None:
    broker = aqueue.RabbitmqBroker(
        "amqp://guest:topsecret@127.0.0.1:1/", connect_attempts=3, connect_retry_delay=0.05
    )
    started = time.monotonic()
    with pytest.raises(aqueue.BrokerConnectionError) as info:
        await broker.connect()
    message = str(info.value)
    assert "127.0.0.1:1" in message
    assert "3 attempts" in message
    assert "topsecret" not in message
    assert "\n" not in message
    assert time.monotonic() - started < 5


async def test_wrong_credentials_fail_at_once_without_showing_them() -> None:
    broker = aqueue.RabbitmqBroker("amqp://guest:wrong-password@127.0.0.1:5672/")
    with pytest.raises(aqueue.BrokerConnectionError, match="refused the credentials") as info:
        await broker.connect()
    assert "wrong-password" not in str(info.value)


async def test_concurrent_first_use_opens_exactly_one_connection(
    rabbitmq_broker: aqueue.RabbitmqBroker, make_queue_name: object
) -> None:
    broker = rabbitmq_broker
    queues = [make_queue_name() for _ in range(4)]  # type: ignore[operator]
    actors = []
    for q in queues:

        @broker.actor(queue_name=q, actor_name=f"a_{q}")
        async def task(n: int) -> None: ...

        actors.append(task)

    # No connect() call: 200 sends race to connect on first use.
    await asyncio.gather(*(a.send(i) for a in actors for i in range(50)))
    connection = broker.connection
    assert connection is not None
    assert await asyncio.to_thread(connections_of_pid, os.getpid()) == 1
    assert await asyncio.to_thread(connections_of_pid, os.getpid(), "publish") == 1
    async with aqueue.Worker(broker):
        for q in queues:
            await broker.join(q, timeout=20)
        assert broker.connection is connection
        # Consuming adds the one connection that never publishes.
        assert await asyncio.to_thread(connections_of_pid, os.getpid()) == 2
        assert await asyncio.to_thread(connections_of_pid, os.getpid(), "consume") == 1


async def test_queues_are_durable_with_dead_lettering_to_xq(
    rabbitmq_broker: aqueue.RabbitmqBroker, rabbit: RabbitAdmin, queue_name: str
) -> None:
    broker = rabbitmq_broker
    await broker.declare_queue(queue_name)
    out = await asyncio.to_thread(rabbitmqctl, "list_queues", "name", "durable", "arguments")
    lines = {line.split("\t")[0]: line for line in out.splitlines()}
    assert lines[queue_name].split("\t")[1] == "true"
    assert f'{{"x-dead-letter-routing-key","{queue_name}.XQ"}}' in lines[queue_name]
    assert lines[f"{queue_name}.XQ"].split("\t")[1] == "true"
    # A message the broker dead-letters (rejected without requeue) lands in q.XQ.
    await rabbit.publish_raw(queue_name, b"x")
    async with rabbit.connection.channel() as channel:
        queue = await channel.get_queue(queue_name)
        message = await queue.get()
        await message.reject(requeue=False)
    await asyncio.sleep(0.1)
    assert await rabbit.count(queue_name + ".XQ") == 1


async def test_messages_are_persistent_and_carry_their_id(
    rabbitmq_broker: aqueue.RabbitmqBroker, rabbit: RabbitAdmin, queue_name: str
) -> None:
    broker = rabbitmq_broker

    @broker.actor(queue_name=queue_name)
    async def task(n: int) -> None: ...

    sent = await task.send(5)
    got = await rabbit.get(queue_name)
    assert got is not None
    assert got.delivery_mode == 2
    assert got.message_id == sent.message_id
    assert got.content_type == "application/json"
    assert aqueue.Message.decode(got.body) == sent


async def test_unroutable_publish_raises_instead_of_vanishing(
    rabbitmq_broker: aqueue.RabbitmqBroker,
) -> None:
    broker = rabbitmq_broker
    with pytest.raises(aqueue.UnroutableError, match="no queue is bound"):
        await broker.publish("no-such-queue-anywhere", b"{}", message_id="m-unroutable")


async def test_send_succeeds_only_once_confirmed_and_many_sends_pipeline(
    rabbitmq_broker: aqueue.RabbitmqBroker, rabbit: RabbitAdmin, queue_name: str
) -> None:
    broker = rabbitmq_broker

    @broker.actor(queue_name=queue_name)
    async def task(n: int) -> None: ...

    await broker.connect()
    started = time.monotonic()
    await asyncio.gather(*(task.send(i) for i in range(2000)))
    elapsed = time.monotonic() - started
    # Every confirmed message is in the queue.
    assert await rabbit.count(queue_name) == 2000
    # A lock around each confirm round trip would need about 2000 x RTT; pipelined
    # confirms take a fraction of that. Generous bound for a noisy machine.
    assert elapsed < 10


async def test_join_counts_unfinished_messages_of_this_process(
    rabbitmq_broker: aqueue.RabbitmqBroker, queue_name: str
) -> None:
    broker = rabbitmq_broker
    release = asyncio.Event()

    @broker.actor(queue_name=queue_name)
    async def waits() -> None:
        await release.wait()

    await waits.send()
    async with aqueue.Worker(broker, queues=[queue_name]):
        # The queue is empty as soon as the message is delivered, but it is in flight.
        with pytest.raises(TimeoutError):
            await broker.join(queue_name, timeout=0.5)
        release.set()
        await broker.join(queue_name, timeout=10)


async def test_broker_as_async_context_manager() -> None:
    async with aqueue.RabbitmqBroker(RABBITMQ_URL) as broker:
        assert broker.connection is not None
        assert not broker.connection.is_closed
    assert broker.connection is None


async def test_join_on_a_missing_queue_returns_and_sending_still_works(
    rabbitmq_broker: aqueue.RabbitmqBroker, queue_name: str
) -> None:
    broker = rabbitmq_broker

    @broker.actor(queue_name=queue_name)
    async def task() -> None: ...

    await broker.join("no-such-queue-for-join", timeout=2)
    assert await broker.ready_count("no-such-queue-for-join") == 0
    await task.send()
    assert await broker.ready_count(queue_name) == 1
