"""What the task-events middleware (TaskEvents, for the dashboard's history) costs a worker.

Drains the same number of no-op messages with and without ``TaskEvents``, alternating, on
the same RabbitMQ, and prints messages per second and CPU seconds per 1,000 messages of
each, and their ratio (the machine may be noisy: compare within one run)::

    python benchmarks/events_cost.py --messages 5000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid

import aio_pika

import aqueue
from aqueue.middleware import TaskEvents

URL = os.environ.get("AQUEUE_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")


async def drain(messages: int, *, events: bool) -> tuple[float, float]:
    """(messages per second, CPU seconds per 1,000 messages) of one drain."""
    queue = f"events-cost-{uuid.uuid4().hex[:8]}"
    stream = f"{queue}.events"
    broker = aqueue.RabbitmqBroker(URL)
    if events:
        broker.add_middleware(TaskEvents(stream))
    done = 0
    finished = asyncio.Event()

    @broker.actor(queue_name=queue, max_retries=0)
    async def noop(n: int) -> None:
        nonlocal done
        done += 1
        if done == messages:
            finished.set()

    try:
        await noop.send_many([(n,) for n in range(messages)])
        cpu, wall = time.process_time(), time.perf_counter()
        async with aqueue.Worker(broker, queues=[queue], concurrency=100):
            await asyncio.wait_for(finished.wait(), 300)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return messages / wall, cpu / messages * 1000
    finally:
        await broker.close()
        connection = await aio_pika.connect(URL)
        async with connection, connection.channel() as channel:
            if events:
                assert await _batches_in(channel, stream), "no task events reached the stream"
            for name in (queue, queue + ".XQ", stream):
                await channel.queue_delete(name)


async def _batches_in(channel: aio_pika.abc.AbstractChannel, stream: str) -> int:
    """How many batches the stream holds (read from its first offset for half a second)."""
    await channel.set_qos(prefetch_count=100)
    queue = await channel.declare_queue(stream, passive=True)
    read: list[int] = []

    async def on_batch(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        read.append(len(message.body))
        await message.ack()

    tag = await queue.consume(on_batch, arguments={"x-stream-offset": "first"})
    await asyncio.sleep(0.5)
    await queue.cancel(tag)
    return len(read)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for _ in range(args.rounds):
        for events in (False, True):
            results[events].append(await drain(args.messages, events=events))
    for events, runs in results.items():
        rates = ", ".join(f"{r:,.0f}" for r, _ in runs)
        cpus = ", ".join(f"{c:.3f}" for _, c in runs)
        label = "with TaskEvents" if events else "without"
        print(f"{label:16} msgs/s {rates}; CPU s per 1,000 msgs {cpus}")
    best = {e: max(r for r, _ in runs) for e, runs in results.items()}
    cpu = {e: min(c for _, c in runs) for e, runs in results.items()}
    print(
        f"best rate with/without: {best[True] / best[False]:.2f}; "
        f"least CPU per message with/without: {cpu[True] / cpu[False]:.2f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
