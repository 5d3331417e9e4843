"""send_many on RabbitMQ: the publishes of a batch go out in a few socket writes, each
confirm tracked, and what is interrupted or refused is handled per message."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import aiormq
import pytest

import aqueue
from aqueue.brokers.rabbitmq import publish_batches, publisher
from aqueue.brokers.rabbitmq.publish_batches import Outgoing

from ._proxy import FaultProxy
from .conftest import RABBITMQ_URL, RabbitAdmin, unique_name


async def _message_ids(queue_name: str) -> list[str]:
    """Every message's id in ``queue_name``, read and left in place (requeued)."""
    connection = await aio_pika.connect(RABBITMQ_URL)
    ids: list[str] = []
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=0)
        queue = await channel.declare_queue(queue_name, passive=True)
        while (message := await queue.get(fail=False, no_ack=False)) is not None:
            ids.append(json.loads(message.body)["message_id"])
        await channel.close()  # the unacked messages go back
    finally:
        await connection.close()
    return ids


def _underlay(broker: aqueue.RabbitmqBroker) -> Any:
    channel = broker._publishing.existing_channel("publish")
    assert channel is not None
    return channel._channel.channel  # type: ignore[attr-defined]


class _Spy:
    """Counts the batch writes and aiormq's own one-by-one publishes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.batches = 0
        self.single = 0
        write = publish_batches.write_publishes
        basic_publish = aiormq.Channel.basic_publish

        async def counted_write(*args: Any, **kwargs: Any) -> None:
            self.batches += 1
            await write(*args, **kwargs)

        async def counted_single(*args: Any, **kwargs: Any) -> Any:
            self.single += 1
            return await basic_publish(*args, **kwargs)

        monkeypatch.setattr(publisher, "write_publishes", counted_write)
        monkeypatch.setattr(aiormq.Channel, "basic_publish", counted_single)


@pytest.fixture
async def task(rabbitmq_broker: aqueue.RabbitmqBroker, queue_name: str) -> aqueue.Actor[Any, Any]:
    """An actor on ``queue_name`` whose first message (``-1``, in the queue) opened the
    publish channel."""

    @rabbitmq_broker.actor(queue_name=queue_name)
    async def task(i: int) -> None: ...

    await task.send(-1)
    return task


async def test_send_many_writes_a_batch_and_every_message_arrives(
    rabbitmq_broker: aqueue.RabbitmqBroker,
    rabbit: RabbitAdmin,
    queue_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    @rabbitmq_broker.actor(queue_name=queue_name)
    async def store(text: str) -> None: ...

    await rabbitmq_broker.connect()
    spy = _Spy(monkeypatch)
    # Sizes that fill chunks by count and by bytes, and bodies split over several frames.
    calls = [("x" * (i % 7) * 100,) for i in range(2_000)] + [("y" * 300_000,)] * 3
    messages = await store.send_many(calls)

    assert spy.batches == 1 and spy.single == 0  # the batch path ran, with no fallback
    ids = await _message_ids(queue_name)
    assert Counter(ids) == Counter(m.message_id for m in messages)
    channel = _underlay(rabbitmq_broker)
    assert channel.message_id_delivery_tag == {}  # nothing left behind per message
    assert channel.confirmations == {}


async def test_a_batch_reports_the_unroutable_ones_and_publishes_the_rest(
    rabbitmq_broker: aqueue.RabbitmqBroker, rabbit: RabbitAdmin, queue_name: str
) -> None:
    await rabbitmq_broker.connect()
    await rabbitmq_broker.declare_queue(queue_name)
    await rabbitmq_broker.publish(queue_name, b"{}", message_id="warm-up")
    nowhere = unique_name("no-such-queue")
    items = [Outgoing(nowhere if i % 3 == 1 else queue_name, b"{}", f"m{i}") for i in range(30)]
    errors = await rabbitmq_broker._publisher.publish_many(items)

    assert [i for i, e in enumerate(errors) if e is not None] == list(range(1, 30, 3))
    assert all(isinstance(e, aqueue.UnroutableError) for e in errors if e is not None)
    assert "no queue is bound" in str(errors[1]) and "m1" in str(errors[1])
    assert await rabbit.count(queue_name) == 1 + 20


async def test_batches_and_single_sends_share_the_channel(
    rabbitmq_broker: aqueue.RabbitmqBroker,
    rabbit: RabbitAdmin,
    queue_name: str,
    task: aqueue.Actor[Any, Any],
) -> None:
    """Delivery tags stay in RabbitMQ's order when batches and single publishes mix."""
    nowhere = unique_name("no-such-queue")

    async def lost(i: int) -> Exception | None:
        try:
            await rabbitmq_broker.publish(nowhere, b"{}", message_id=f"lost-{i}")
        except aqueue.UnroutableError as exc:
            return exc
        return None

    results = await asyncio.gather(
        task.send_many([(i,) for i in range(600)]),
        *(task.send(i) for i in range(100)),
        *(lost(i) for i in range(50)),
        task.send_many([(i,) for i in range(600, 900)]),
    )
    assert all(isinstance(r, aqueue.UnroutableError) for r in results[101:151])
    assert await rabbit.count(queue_name) == 1 + 600 + 100 + 300


async def test_send_many_declares_a_queue_deleted_behind_its_back(
    rabbitmq_broker: aqueue.RabbitmqBroker,
    rabbit: RabbitAdmin,
    queue_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    @rabbitmq_broker.actor(queue_name=queue_name)
    async def task(i: int) -> None: ...

    await task.send(0)
    await rabbit.delete(queue_name)
    spy = _Spy(monkeypatch)
    await task.send_many([(i,) for i in range(50)])
    assert await rabbit.count(queue_name) == 50
    assert (spy.batches, spy.single) == (2, 0)  # returned, declared again, one more batch


async def test_an_item_that_cannot_be_framed_fails_alone(
    rabbitmq_broker: aqueue.RabbitmqBroker, rabbit: RabbitAdmin, queue_name: str
) -> None:
    await rabbitmq_broker.connect()
    await rabbitmq_broker.declare_queue(queue_name)
    items = [Outgoing(queue_name, b"{}", f"m{i}") for i in range(5)]
    items[2] = Outgoing(queue_name, b"{}", "x" * 300)  # AMQP short strings hold 255 bytes
    errors = await rabbitmq_broker._publisher.publish_many(items)
    assert [type(e).__name__ if e else None for e in errors] == [None, None, "TypeError"] + [
        None
    ] * 2
    assert await rabbit.count(queue_name) == 4


async def test_an_empty_batch_returns_at_once_without_a_broker() -> None:
    broker = aqueue.RabbitmqBroker("amqp://guest:guest@127.0.0.1:1/", publish_timeout=5)
    try:

        @broker.actor(queue_name=unique_name("q"))
        async def task(i: int) -> None: ...

        started = time.monotonic()
        assert await task.send_many([]) == []
        assert time.monotonic() - started < 0.5
    finally:
        await broker.close()


async def test_enqueue_many_refuses_two_messages_with_one_id(
    broker: aqueue.Broker, queue_name: str
) -> None:
    @broker.actor(queue_name=queue_name)
    async def task(i: int) -> None: ...

    message = task.message(1)
    with pytest.raises(aqueue.ValidationError, match="same message id"):
        await broker.enqueue_many([message, message])
    info = await broker.queue_info(queue_name)
    assert info is None or info.ready == 0


async def test_a_message_too_large_fails_the_batch_before_anything_is_published(
    make_broker: Callable[..., aqueue.Broker], queue_name: str
) -> None:
    broker = make_broker(max_message_size=10_000)

    @broker.actor(queue_name=queue_name)
    async def task(text: str) -> None: ...

    await task.send("warm-up")
    with pytest.raises(aqueue.ValidationError, match="max_message_size"):
        await task.send_many([("a",), ("b" * 20_000,), ("c",)])
    info = await broker.queue_info(queue_name)
    assert info is not None and info.ready == 1


async def test_without_aiormqs_internals_send_many_publishes_one_by_one(
    rabbitmq_broker: aqueue.RabbitmqBroker,
    rabbit: RabbitAdmin,
    queue_name: str,
    monkeypatch: pytest.MonkeyPatch,
    task: aqueue.Actor[Any, Any],
) -> None:
    monkeypatch.setattr(publisher, "can_batch", lambda channel: False)
    spy = _Spy(monkeypatch)
    await task.send_many([(i,) for i in range(40)])
    assert spy.batches == 0 and spy.single == 40
    assert await rabbit.count(queue_name) == 41


@contextlib.asynccontextmanager
async def _proxied_sender(
    queue_name: str, publish_timeout: float
) -> AsyncIterator[tuple[FaultProxy, aqueue.RabbitmqBroker, aqueue.Actor[Any, Any]]]:
    """A broker connected through a fault proxy, with an actor on ``queue_name`` whose
    first message opened the publish channel."""
    proxy = await FaultProxy("127.0.0.1", 5672).start()
    broker = aqueue.RabbitmqBroker(proxy.url(), publish_timeout=publish_timeout)
    try:

        @broker.actor(queue_name=queue_name)
        async def task(i: int) -> None: ...

        await task.send(-1)
        yield proxy, broker, task
    finally:
        proxy.blackholed = False
        await broker.close()
        await proxy.close()


async def test_a_batch_cut_by_connection_resets_loses_nothing(
    rabbit: RabbitAdmin, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reset the publishing connection again and again while batches are in flight:
    every send_many returns (the interrupted messages published again) and every message
    is in the queue, some twice at most."""
    async with _proxied_sender(queue_name, publish_timeout=30) as (proxy, broker, task):
        stop = asyncio.Event()

        async def resets() -> int:
            # Reset a connection that has been up for 0.3 s, while a batch is in flight.
            count = 0
            while not stop.is_set():
                connection = broker._publishing.connection
                if connection is None or not connection.connected.is_set():
                    await asyncio.sleep(0.05)
                    continue
                await asyncio.sleep(0.3)
                proxy.reset()
                count += 1
                await asyncio.sleep(0.1)
            return count

        republished = 0
        publish_until = publisher.Publisher._publish_until

        async def counted(self: publisher.Publisher, item: Outgoing, deadline: float) -> None:
            nonlocal republished
            republished += 1
            await publish_until(self, item, deadline)

        monkeypatch.setattr(publisher.Publisher, "_publish_until", counted)
        resetter = asyncio.ensure_future(resets())
        sent: list[str] = []
        started = time.monotonic()
        try:
            for batch in range(10):
                messages = await task.send_many([(batch * 1000 + i,) for i in range(1000)])
                sent += [m.message_id for m in messages]
        finally:
            stop.set()
            reset_count = await resetter
        elapsed = time.monotonic() - started

    assert reset_count >= 3, f"only {reset_count} resets in {elapsed:.1f} s"
    assert republished > 0  # some batch was cut, and its unconfirmed messages sent again
    ids = Counter(await _message_ids(queue_name))
    lost = [m for m in sent if m not in ids]
    duplicated = sum(n - 1 for n in ids.values())
    assert not lost, f"{len(lost)} of {len(sent)} confirmed messages lost"
    assert duplicated <= len(sent)  # published again after a reset: at least once, not a loop
    print(
        f"sent {len(sent)}, resets {reset_count}, in queue {sum(ids.values())}, "
        f"duplicated {duplicated}, lost {len(lost)}, republished {republished}, "
        f"{elapsed:.1f} s"
    )


async def test_a_blackholed_batch_fails_within_the_publish_timeout(
    rabbit: RabbitAdmin, queue_name: str
) -> None:
    async with _proxied_sender(queue_name, publish_timeout=1.5) as (proxy, broker, task):
        proxy.blackholed = True
        started = time.monotonic()
        with pytest.raises(aqueue.BrokerConnectionError, match="did not confirm"):
            await task.send_many([(i,) for i in range(500)])
        elapsed = time.monotonic() - started
        assert 1.4 < elapsed < 4, elapsed
        await asyncio.sleep(0)  # the futures' done callbacks
        assert _underlay(broker).message_id_delivery_tag == {}


async def test_concurrent_sends_are_written_together(
    rabbitmq_broker: aqueue.RabbitmqBroker,
    rabbit: RabbitAdmin,
    queue_name: str,
    monkeypatch: pytest.MonkeyPatch,
    task: aqueue.Actor[Any, Any],
) -> None:
    """Sends made while others wait for their confirm go out as batches; a lone send
    goes out at once, through aiormq."""

    spy = _Spy(monkeypatch)
    await task.send(0)
    assert (spy.batches, spy.single) == (0, 1)
    await asyncio.gather(*(task.send(i) for i in range(1, 301)))
    assert spy.single + spy.batches < 30, (spy.single, spy.batches)
    assert await rabbit.count(queue_name) == 302
    assert rabbitmq_broker._publisher._in_flight == 0


async def test_a_cancelled_concurrent_send_leaves_the_others_alone(
    rabbitmq_broker: aqueue.RabbitmqBroker,
    rabbit: RabbitAdmin,
    queue_name: str,
    task: aqueue.Actor[Any, Any],
) -> None:
    sends = [asyncio.ensure_future(task.send(i)) for i in range(60)]
    await asyncio.sleep(0)  # every send has started: one in flight, the rest pending
    for send in sends[40:]:
        send.cancel()
    results = await asyncio.gather(*sends, return_exceptions=True)
    assert all(r is not None and not isinstance(r, BaseException) for r in results[:40])
    assert all(isinstance(r, asyncio.CancelledError) for r in results[40:])
    await asyncio.sleep(0.5)  # a cancelled sender's message may still be queued
    assert 41 <= await rabbit.count(queue_name) <= 61
    assert rabbitmq_broker._publisher._in_flight == 0
