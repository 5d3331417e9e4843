"""A performance regression guard: aqueue's per-message CPU cost against raw aio-pika's.

Both sides drain a pre-filled queue in this process, alternating, several rounds:

* aqueue: an ``aqueue.Worker`` (default middleware) with a no-op ``async def`` actor;
* raw: aio-pika's ``queue.consume`` with a callback that only does ``await message.ack()``;

both with prefetch 100. The figure compared is CPU seconds of this process per message
(``time.process_time``), as the ratio of the two medians from this run: on a shared,
noisy machine wall-clock throughput swings by 2x, but the CPU each message costs moves
far less, and a ratio taken within one run cancels the machine's speed. There is no
absolute time anywhere.

Measured on the development machine (2 shared cores, others' tests running; see
docs/performance.md), the ratio was 0.70 to 0.77 in three runs of this test, and 0.82 to
0.85 for the same comparison in two runs of ``benchmarks/run.py``: aqueue's worker
costs less CPU per message than the bare aio-pika consumer, since it reads deliveries
from aiormq directly. The test fails above ``MAX_CPU_RATIO`` (1.4, more than 1.6 times
the worst ratio seen), which leaves room for noise yet catches a regression of the
order of a task, a cancel scope or a timer too many per message.

The second test does the same for blocking actors: a no-op ``def`` actor in the
worker's 8 threads against aio-pika handing each message to a ``ThreadPoolExecutor`` of
8 threads (``loop.run_in_executor``) before its ack, both with the worker's prefetch for
8 threads (10). The ratio was 0.81 to 0.88 on the same machine; before issue 18
(``anyio.to_thread`` per message, and a second loop wake-up and a timer per message for
the time limit) it was 1.08 to 1.84. The test fails above ``MAX_BLOCKING_CPU_RATIO``
(1.3). A thread hand-off is noisier than the loop alone, so a failing measurement is
taken again once, and the better of the two counts.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import aio_pika
import aiormq
import pytest

import aqueue
from aqueue.topology import dead_letter_queue_name

from .conftest import RABBITMQ_URL

MESSAGES = 2000
ROUNDS = 3
PREFETCH = 100
MAX_CPU_RATIO = 1.4
MAX_BLOCKING_CPU_RATIO = 1.3
MAX_SEND_MANY_CPU_RATIO = 0.75
THREADS = 8
BLOCKING_PREFETCH = THREADS + THREADS // 4  # the worker's prefetch for one blocking actor
ACTOR = "perf_guard_noop"

pytestmark = pytest.mark.timeout(120)


def queue_name() -> str:
    return f"perf-guard-{uuid.uuid4().hex[:10]}"


async def fill(channel: aio_pika.abc.AbstractChannel, queue: str, bodies: list[bytes]) -> None:
    """Publish ``bodies`` to ``queue`` with confirms, 100 in flight at a time."""
    exchange = channel.default_exchange
    for start in range(0, len(bodies), 100):
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=queue,
                )
                for body in bodies[start : start + 100]
            )
        )


async def wait_ready(channel: aio_pika.abc.AbstractChannel, queue: str, count: int) -> None:
    underlay = await channel.get_underlay_channel()  # a robust channel caches declarations
    for _ in range(200):
        declared = await underlay.queue_declare(queue, passive=True)
        if declared.message_count == count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{queue} did not reach {count} ready messages")


async def delete(connection: aio_pika.abc.AbstractConnection, *queues: str) -> None:
    for queue in queues:
        channel = await connection.channel()
        try:
            await channel.queue_delete(queue)
        except aiormq.exceptions.AMQPError:
            pass
        finally:
            if not channel.is_closed:
                await channel.close()


async def drain_aqueue(
    connection: aio_pika.abc.AbstractConnection, *, blocking: bool = False
) -> float:
    """CPU microseconds per message of a Worker draining MESSAGES pre-filled messages."""
    queue = queue_name()
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL)
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    counter = itertools.count(1)  # next() is atomic: threads count without a lock

    if blocking:

        @broker.actor(queue_name=queue, actor_name=ACTOR)
        def blocking_noop(i: int) -> None:
            if next(counter) == MESSAGES:
                loop.call_soon_threadsafe(done.set_result, time.process_time())

    else:

        @broker.actor(queue_name=queue, actor_name=ACTOR, concurrency=PREFETCH)
        async def noop(i: int) -> None:
            if next(counter) == MESSAGES:
                done.set_result(time.process_time())

    try:
        await broker.declare_queue(queue)
        bodies = [
            aqueue.Message(queue_name=queue, actor_name=ACTOR, args=(i,)).encode()
            for i in range(MESSAGES)
        ]
        channel = await connection.channel(publisher_confirms=True)
        await fill(channel, queue, bodies)
        await wait_ready(channel, queue, MESSAGES)
        await channel.close()
        worker = aqueue.Worker(broker, queues=[queue], concurrency=PREFETCH, threads=THREADS)
        gc.collect()
        started = time.process_time()
        await worker.start()
        try:
            finished = await asyncio.wait_for(done, 60)
        finally:
            await worker.stop()
        return (finished - started) / MESSAGES * 1e6
    finally:
        await broker.close()
        await delete(connection, queue, dead_letter_queue_name(queue))


async def drain_raw(
    connection: aio_pika.abc.AbstractConnection, *, threads: int | None = None
) -> float:
    """CPU microseconds per message of a bare aio-pika consumer, acking each message; with
    ``threads``, each message first goes to a thread pool of that size and back."""
    queue = queue_name()
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    calls = 0
    size = len(aqueue.Message(queue_name=queue, actor_name=ACTOR, args=(1000,)).encode())
    executor = ThreadPoolExecutor(threads or 1)
    prefetch = PREFETCH if threads is None else BLOCKING_PREFETCH

    def noop() -> None:
        return None

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal calls
        if threads is not None:
            await loop.run_in_executor(executor, noop)
        await message.ack()
        calls += 1
        if calls == MESSAGES:
            done.set_result(time.process_time())

    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(queue, durable=True)
        await fill(channel, queue, [b"x" * size] * MESSAGES)
        await wait_ready(channel, queue, MESSAGES)
        await channel.close()
        gc.collect()
        started = time.process_time()
        consumer = await connection.channel()
        await consumer.set_qos(prefetch_count=prefetch)
        declared = await consumer.declare_queue(queue, durable=True)
        tag = await declared.consume(on_message)
        finished = await asyncio.wait_for(done, 60)
        await declared.cancel(tag)
        await consumer.close()
        return (finished - started) / MESSAGES * 1e6
    finally:
        executor.shutdown(wait=False)
        await delete(connection, queue)


async def test_worker_cpu_per_message_stays_near_raw_aio_pika() -> None:
    connection = await aio_pika.connect_robust(RABBITMQ_URL)
    try:
        await drain_raw(connection)  # warm-up: imports, first connections, JIT-free caches
        aqueue_us: list[float] = []
        raw_us: list[float] = []
        for _ in range(ROUNDS):
            aqueue_us.append(await drain_aqueue(connection))
            raw_us.append(await drain_raw(connection))
    finally:
        await connection.close()
    ratio = statistics.median(aqueue_us) / statistics.median(raw_us)
    report = (
        f"CPU per message over {MESSAGES} messages x {ROUNDS} rounds: "
        f"aqueue {[round(x, 1) for x in aqueue_us]} us, raw aio-pika "
        f"{[round(x, 1) for x in raw_us]} us; ratio of medians {ratio:.2f} "
        f"(fails above {MAX_CPU_RATIO})"
    )
    print(report)
    assert ratio <= MAX_CPU_RATIO, report


async def blocking_ratio(connection: aio_pika.abc.AbstractConnection) -> tuple[float, str]:
    aqueue_us: list[float] = []
    raw_us: list[float] = []
    for _ in range(ROUNDS):
        aqueue_us.append(await drain_aqueue(connection, blocking=True))
        raw_us.append(await drain_raw(connection, threads=THREADS))
    ratio = statistics.median(aqueue_us) / statistics.median(raw_us)
    report = (
        f"CPU per message of a blocking actor, {THREADS} threads, {MESSAGES} messages x "
        f"{ROUNDS} rounds: aqueue {[round(x, 1) for x in aqueue_us]} us, raw aio-pika with "
        f"run_in_executor {[round(x, 1) for x in raw_us]} us; ratio of medians {ratio:.2f} "
        f"(fails above {MAX_BLOCKING_CPU_RATIO})"
    )
    return ratio, report


async def test_blocking_actor_cpu_per_message_stays_near_raw_thread_hand_off() -> None:
    connection = await aio_pika.connect_robust(RABBITMQ_URL)
    try:
        await drain_raw(connection, threads=THREADS)  # warm-up: threads, first connections
        ratio, report = await blocking_ratio(connection)
        print(report)
        if ratio > MAX_BLOCKING_CPU_RATIO:  # once more: the better measurement counts
            again, report = await blocking_ratio(connection)
            print(report)
            ratio = min(ratio, again)
    finally:
        await connection.close()
    assert ratio <= MAX_BLOCKING_CPU_RATIO, report


async def send_many_cpu(broker: aqueue.RabbitmqBroker, actor: aqueue.Actor[..., None]) -> float:
    """CPU microseconds per message of ``send_many`` in batches of 1,000."""
    gc.collect()
    cpu = time.process_time()
    for start in range(0, MESSAGES, 1000):
        await actor.send_many([(i,) for i in range(start, start + 1000)])
    return (time.process_time() - cpu) / MESSAGES * 1e6


async def gathered_cpu(channel: aio_pika.abc.AbstractChannel, queue: str) -> float:
    """The same for aio-pika: 1,000 confirmed publishes gathered at a time."""
    gc.collect()
    exchange = channel.default_exchange
    cpu = time.process_time()
    for start in range(0, MESSAGES, 1000):
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(
                        b'{"args": [%d]}' % i, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                    ),
                    routing_key=queue,
                )
                for i in range(start, start + 1000)
            )
        )
    return (time.process_time() - cpu) / MESSAGES * 1e6


async def test_send_many_cpu_per_message_stays_below_raw_gathered_publishes() -> None:
    """``send_many`` writes a batch's publishes together (``publish_batches``): measured
    at 0.3 to 0.5 of the CPU per message of aio-pika's gathered publishes on the
    development machine. Above ``MAX_SEND_MANY_CPU_RATIO`` (0.75) it lost that path, for
    example to an aiormq whose channel no longer has what it uses (then it publishes one
    by one: 1.08 when that was forced)."""
    queue = queue_name()
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL)

    @broker.actor(queue_name=queue, actor_name=ACTOR)
    async def noop(i: int) -> None: ...

    try:
        connection = await aio_pika.connect_robust(RABBITMQ_URL)
    except BaseException:
        await broker.close()
        raise
    try:
        channel = await connection.channel(publisher_confirms=True)
        await broker.declare_queue(queue)
        await send_many_cpu(broker, noop)  # warm-up: channels, declarations
        await gathered_cpu(channel, queue)
        aqueue_us: list[float] = []
        raw_us: list[float] = []
        for _ in range(ROUNDS):
            aqueue_us.append(await send_many_cpu(broker, noop))
            raw_us.append(await gathered_cpu(channel, queue))
    finally:
        await broker.close()
        await delete(connection, queue, dead_letter_queue_name(queue))
        await connection.close()
    ratio = statistics.median(aqueue_us) / statistics.median(raw_us)
    report = (
        f"CPU per message of send_many, {MESSAGES} messages x {ROUNDS} rounds: aqueue "
        f"{[round(x, 1) for x in aqueue_us]} us, aio-pika gathered "
        f"{[round(x, 1) for x in raw_us]} us; ratio of medians {ratio:.2f} "
        f"(fails above {MAX_SEND_MANY_CPU_RATIO})"
    )
    print(report)
    assert ratio <= MAX_SEND_MANY_CPU_RATIO, report
