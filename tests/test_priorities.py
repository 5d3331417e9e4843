"""Message priorities: priority queues, the ``priority`` option, and what keeps it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker as DramatiqBroker

import aqueue
from aqueue.brokers.rabbitmq.declarations import Declarations
from aqueue.topology import queue_arguments

from .conftest import RABBITMQ_URL, RabbitAdmin

pytestmark = pytest.mark.timeout(60)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


# -- order ----------------------------------------------------------------------------------


async def test_high_priority_messages_run_before_low_ones_already_queued(
    broker: aqueue.Broker, queue_name: str
) -> None:
    order: list[str] = []

    # concurrency=1: prefetch 1, so that what waits in the queue is what RabbitMQ orders.
    @broker.actor(queue_name=queue_name, max_priority=10, concurrency=1)
    async def job(name: str) -> None:
        order.append(name)

    @broker.actor(queue_name=queue_name, priority=7, concurrency=1)
    async def alert(name: str) -> None:  # every message of it has priority 7
        order.append(name)

    for n in range(3):
        await job.send(f"low{n}")  # no priority: 0
    for n in range(2):
        await job.send_with_options(args=(f"mid{n}",), priority=4)
    await alert.send("alert0")
    await job.send_many([("high0",), ("high1",)], priority=9)  # the batch path too
    await broker.enqueue(job.message_with_options(args=("high2",), priority=9))
    assert await broker.ready_count(queue_name) == 9

    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=20)
    assert sorted(order[:3]) == ["high0", "high1", "high2"]
    assert order[3:] == ["alert0", "mid0", "mid1", "low0", "low1", "low2"]


async def test_a_delayed_message_keeps_its_priority(broker: aqueue.Broker, queue_name: str) -> None:
    order: list[str] = []

    @broker.actor(queue_name=queue_name, max_priority=5, concurrency=1)
    async def job(name: str) -> None:
        order.append(name)

    # Through the delay levels (plain queues) and back to the work queue.
    await job.send_with_options(args=("urgent",), priority=5, delay=0.3)
    for n in range(3):
        await job.send(f"low{n}")

    async def all_ready() -> bool:
        return await broker.ready_count(queue_name) == 4

    await eventually(all_ready)
    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=20)
    assert order == ["urgent", "low0", "low1", "low2"]


async def test_a_retried_message_keeps_its_priority(broker: aqueue.Broker, queue_name: str) -> None:
    order: list[str] = []

    @broker.actor(
        queue_name=queue_name,
        max_priority=5,
        concurrency=1,
        max_retries=1,
        min_backoff=0.2,
        max_backoff=0.2,
    )
    async def job(name: str) -> None:
        retries = aqueue.current_message().options.get("retries", 0)
        order.append(f"{name}#{retries}")
        if name == "urgent" and retries == 0:
            raise RuntimeError("fails once")
        await asyncio.sleep(0.1)

    for n in range(10):
        await job.send(f"low{n}")
    await job.send_with_options(args=("urgent",), priority=5)
    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=30)
    assert order[0] == "urgent#0"
    assert len(order) == 12
    # Back in the queue 0.2 s later, while most lows (0.1 s each) still wait: it goes
    # before them. Without its priority it would be last (index 11).
    assert order.index("urgent#1") <= 7, order


async def test_a_message_given_back_by_a_stopping_worker_keeps_its_priority(
    broker: aqueue.Broker, queue_name: str
) -> None:
    order: list[str] = []
    release = asyncio.Event()

    @broker.actor(queue_name=queue_name, max_priority=5, concurrency=1)
    async def job(name: str) -> None:
        order.append(name)
        await release.wait()

    @broker.actor(queue_name=queue_name, concurrency=2)
    async def spare() -> None:  # never sent: raises the queue's prefetch to 3
        pass

    worker = aqueue.Worker(broker, queues=[queue_name], shutdown_timeout=0.1)
    await worker.start()
    try:
        await job.send("first")

        async def holding(count: int) -> bool:
            return broker._in_flight.get(queue_name, 0) == count

        await eventually(lambda: holding(1))
        await job.send_with_options(args=("urgent",), priority=5)
        for n in range(3):
            await job.send(f"low{n}")
        await eventually(lambda: holding(3))  # urgent and low0 prefetched, not started
    finally:
        await worker.stop()  # gives them back: published again, not requeued
    assert order == ["first"]

    release.set()
    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=20)
    assert order[1] == "urgent", order


async def test_a_requeued_dead_letter_keeps_its_priority(
    broker: aqueue.Broker, queue_name: str
) -> None:
    order: list[str] = []
    failing = True

    @broker.actor(queue_name=queue_name, max_priority=5, concurrency=1, max_retries=0)
    async def job(name: str) -> None:
        if failing:
            raise RuntimeError("dead-lettered")
        order.append(name)

    await job.send_with_options(args=("urgent",), priority=5)
    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=20)
    assert len(await broker.dead_letters(queue_name)) == 1

    failing = False
    for n in range(3):
        await job.send(f"low{n}")
    assert await broker.requeue_dead_letters(queue_name) == 1  # after the lows
    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=20)
    assert order == ["urgent", "low0", "low1", "low2"]


# -- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 256, -1, "5", 2.0, True, None])
def test_max_priority_must_be_an_int_from_1_to_255(value: object) -> None:
    broker = aqueue.InMemoryBroker()
    with pytest.raises(aqueue.ActorDefinitionError, match="max_priority must be an int from 1"):
        broker.actor(actor_name="job", max_priority=value)(_job)


def test_max_priority_is_set_on_the_actor_only() -> None:
    broker = aqueue.InMemoryBroker()
    job = broker.actor(max_priority=5)(_job)
    with pytest.raises(aqueue.ValidationError, match="'max_priority' can only be set on the actor"):
        job.message_with_options(max_priority=3)


async def test_priority_above_the_queue_maximum_is_refused_at_send() -> None:
    broker = aqueue.InMemoryBroker()
    job = broker.actor(queue_name="jobs", max_priority=5)(_job)
    with pytest.raises(aqueue.ValidationError) as caught:
        await job.send_with_options(priority=6)
    text = str(caught.value)
    assert "_job()" in text and "priority 6" in text and "'jobs' (5)" in text
    for send in (
        lambda: job.send_many([(), ()], priority=9),
        lambda: job.call_with_options(priority=9, timeout=1),
    ):
        with pytest.raises(aqueue.ValidationError, match="above the max_priority"):
            await send()
    with pytest.raises(aqueue.ValidationError, match="from 0 to 255"):
        await job.send_with_options(priority=-1)
    assert await broker.ready_count("jobs") == 0  # nothing was published

    # The queue's maximum is the highest of its actors'.
    broker.actor(queue_name="jobs", actor_name="other", max_priority=8)(_job)
    await job.send_with_options(priority=8)
    assert await broker.ready_count("jobs") == 1


async def test_priority_on_a_queue_without_max_priority_is_refused() -> None:
    broker = aqueue.InMemoryBroker()
    job = broker.actor(queue_name="jobs")(_job)
    with pytest.raises(aqueue.ValidationError) as caught:
        await job.send_with_options(priority=1)
    assert "no actor of queue 'jobs' sets max_priority" in str(caught.value)

    # An actor's default priority is checked the same way, when its messages are sent.
    defaulted = broker.actor(queue_name="jobs", actor_name="defaulted", priority=3)(_job)
    with pytest.raises(aqueue.ValidationError, match="sets max_priority"):
        await defaulted.send()


async def _job() -> None: ...


# -- declarations ---------------------------------------------------------------------------


async def test_a_queue_that_exists_without_priorities_is_one_clear_error(
    rabbitmq_broker: aqueue.RabbitmqBroker, queue_name: str
) -> None:
    await rabbitmq_broker.declare_queue(queue_name)  # no actor yet: no priorities
    other = aqueue.RabbitmqBroker(RABBITMQ_URL)
    try:
        job = other.actor(queue_name=queue_name, max_priority=5)(_job)
        with pytest.raises(aqueue.BrokerError) as caught:
            await job.send()
    finally:
        await other.close()
    text = str(caught.value)
    assert "\n" not in text
    assert f"queue {queue_name!r} exists with other arguments" in text
    assert "x-max-priority=no value" in text and "x-max-priority='5'" in text
    assert "highest max_priority of its actors" in text


async def test_a_priority_queue_is_declared_with_x_max_priority(
    rabbitmq_broker: aqueue.RabbitmqBroker, rabbit: RabbitAdmin, queue_name: str
) -> None:
    rabbitmq_broker.actor(queue_name=queue_name, actor_name="a", max_priority=3)(_job)
    rabbitmq_broker.actor(queue_name=queue_name, actor_name="b", max_priority=7)(_job)
    rabbitmq_broker.actor(queue_name=queue_name, actor_name="c")(_job)
    await rabbitmq_broker.declare_queue(queue_name)
    async with rabbit.connection.channel() as channel:  # equal arguments: accepted
        await channel.declare_queue(
            queue_name, durable=True, arguments=queue_arguments(queue_name, max_priority=7)
        )
        await channel.declare_queue(queue_name + ".XQ", durable=True)  # .XQ: no priorities


async def test_a_process_that_knows_no_max_priority_uses_the_priority_queue_as_it_is(
    rabbitmq_broker: aqueue.RabbitmqBroker, rabbit: RabbitAdmin, queue_name: str
) -> None:
    job = rabbitmq_broker.actor(queue_name=queue_name, max_priority=5)(_job)
    await job.send_with_options(priority=5)
    ops = aqueue.RabbitmqBroker(RABBITMQ_URL)  # an operations command: no actors
    try:
        await ops.declare_queue(queue_name)  # no PRECONDITION_FAILED
        assert await ops.requeue_dead_letters(queue_name) == 0
        plain = ops.actor(queue_name=queue_name, actor_name="plain")(_job)  # no max_priority
        await plain.send()
        with pytest.raises(aqueue.ValidationError, match="sets max_priority"):
            await plain.send_with_options(priority=1)
    finally:
        await ops.close()
    message = await rabbit.get(queue_name)
    assert message is not None and message.priority == 5  # the queue kept its priorities


async def test_a_process_without_the_queues_actors_publishes_the_priority_as_it_is(
    rabbitmq_broker: aqueue.RabbitmqBroker, rabbit: RabbitAdmin, queue_name: str
) -> None:
    """Like a worker publishing the next step of a pipeline for another service's actor."""
    second = rabbitmq_broker.actor(queue_name=queue_name, actor_name="second", max_priority=5)(_job)
    await rabbitmq_broker.declare_queue(queue_name)
    message = second.message_with_options(priority=3)
    elsewhere = aqueue.RabbitmqBroker(RABBITMQ_URL)  # knows no actor of that queue
    try:
        await elsewhere.enqueue(message)
    finally:
        await elsewhere.close()
    got = await rabbit.get(queue_name)
    assert got is not None and got.priority == 3


async def test_quorum_queues_refuse_priorities_on_rabbitmq_3(queue_name: str) -> None:
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL, queue_type="quorum")
    try:
        job = broker.actor(queue_name=queue_name, actor_name="urgent_reports", max_priority=3)(_job)
        await broker.connect()
        assert broker.server_version is not None
        if broker.server_version >= (4, 0, 0):
            pytest.skip("RabbitMQ 4.x quorum queues have priorities")
        with pytest.raises(aqueue.BrokerError) as caught:
            await job.send()
        text = str(caught.value)
        assert f"queue {queue_name!r} is a quorum queue" in text
        assert "'urgent_reports' (max_priority=3)" in text
        assert "RabbitMQ 3." in text and "from 4.0.0" in text
        assert await broker.queue_info(queue_name) is None  # refused before declaring anything
        assert await broker.queue_info(queue_name + ".XQ") is None
    finally:
        await broker.close()


class RecordingChannel:
    """Records the queues declared and their arguments (no RabbitMQ)."""

    is_closed = False

    def __init__(self) -> None:
        self.queues: dict[str, dict[str, Any]] = {}

    async def queue_declare(self, name: str, **options: Any) -> None:
        self.queues[name] = dict(options.get("arguments") or {})

    async def exchange_declare(self, *args: Any, **options: Any) -> None: ...

    async def queue_bind(self, *args: Any, **options: Any) -> None: ...


async def declared(
    *,
    version: tuple[int, int, int],
    queue_type: str = "classic",
    priorities: dict[str, int],
    dramatiq_compat: bool = False,
    dramatiq_max_priority: int | None = None,
) -> dict[str, dict[str, Any]]:
    channel = RecordingChannel()

    async def open_channel() -> Any:
        return channel

    declarations = Declarations(
        open_channel,
        queue_type_of=lambda name: queue_type,  # type: ignore[arg-type,return-value]
        delivery_limit=20,
        timeout=5,
        describe_node=lambda: "node",
        server_version=lambda: version,
        dramatiq_compat=dramatiq_compat,
        max_priority=dramatiq_max_priority,
        max_priorities=lambda name: priorities if name == "jobs" else {},
    )
    await declarations.queue("jobs")
    return channel.queues


async def test_rabbitmq_4_quorum_queues_get_priorities_without_x_max_priority() -> None:
    queues = await declared(version=(4, 0, 5), queue_type="quorum", priorities={"a": 9})
    assert queues["jobs"]["x-queue-type"] == "quorum"
    assert "x-max-priority" not in queues["jobs"]
    with pytest.raises(aqueue.BrokerError, match=r"no message priorities on RabbitMQ 3\.13\.7"):
        await declared(version=(3, 13, 7), queue_type="quorum", priorities={"a": 9})
    classic = await declared(version=(3, 13, 7), priorities={"a": 2, "b": 9})
    assert classic["jobs"]["x-max-priority"] == 9
    assert "x-max-priority" not in classic["jobs.XQ"]


async def test_dramatiq_compat_declares_the_actors_max_priority_as_dramatiq_does() -> None:
    queues = await declared(version=(3, 10, 8), priorities={"a": 5}, dramatiq_compat=True)
    assert queues["jobs"]["x-max-priority"] == queues["jobs.DQ"]["x-max-priority"] == 5
    assert "x-max-priority" not in queues["jobs.XQ"]  # Dramatiq 2.x declares none there
    # Dramatiq's broker-wide max_priority and the actors': the highest of them.
    both = await declared(
        version=(3, 10, 8), priorities={"a": 5}, dramatiq_compat=True, dramatiq_max_priority=10
    )
    assert both["jobs"]["x-max-priority"] == both["jobs.DQ"]["x-max-priority"] == 10


async def test_dramatiq_with_the_same_max_priority_shares_the_queue_and_its_priorities(
    rabbit: RabbitAdmin, queue_name: str
) -> None:
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL, dramatiq_compat=True)
    dramatiq_broker = DramatiqBroker(url=RABBITMQ_URL, max_priority=5, confirm_delivery=True)
    order: list[str] = []
    try:

        @broker.actor(queue_name=queue_name, actor_name="job", max_priority=5, concurrency=1)
        async def job(name: str) -> None:
            order.append(name)

        await job.send("low")  # declares q, q.DQ and q.XQ first
        # Dramatiq's declarations are equal, and its broker_priority is the AMQP priority.
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=queue_name,
            actor_name="job",
            args=("dramatiq-high",),
            kwargs={},
            options={"broker_priority": 5},
        )
        await asyncio.to_thread(dramatiq_broker.declare_queue, queue_name, ensure=True)
        await asyncio.to_thread(dramatiq_broker.enqueue, message)
        await job.send_with_options(args=("high",), priority=4)
        async with aqueue.Worker(broker, queues=[queue_name]):
            await broker.join(queue_name, timeout=20)
        assert order == ["dramatiq-high", "high", "low"]
    finally:
        await broker.close()
        dramatiq_broker.close()
        await rabbit.delete(queue_name + ".DQ")
