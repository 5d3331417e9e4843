"""Where a worker's CPU per message goes: aqueue's own code, measured without the network.

Run from the repository root (RabbitMQ must be up: the worker connects, but the
deliveries below never touch the network)::

    python benchmarks/profile_worker.py            # the table of variants
    python benchmarks/profile_worker.py --profile  # plus a cProfile of the default variant
    python benchmarks/profile_worker.py --blocking # a blocking (def) actor, in the threads

A started ``aqueue.Worker`` gets ``--messages`` fake deliveries (valid aqueue message
bodies; ``ack()`` does nothing) handed to its delivery handler, ``--window`` at a time,
each in a task of its own, as aiormq runs a consumer callback per delivery. The
baseline hands the same deliveries to a handler that only awaits ``ack()``; the
difference is aqueue's own cost per message, in CPU microseconds. Variants switch
parts off (middleware, the time limit, argument checking) to show what each costs.
With ``--blocking`` the actor is a plain ``def`` run in the worker's threads
(``--threads``), and the baseline hands each delivery to a ``ThreadPoolExecutor`` of as
many threads with ``loop.run_in_executor`` before its ack.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import os
import pstats
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aio_pika

import aqueue
from aqueue.middleware import default_middleware

URL = os.environ.get("AQUEUE_BROKER_URL") or "amqp://guest:guest@127.0.0.1:5672/"


class FakeDelivery:
    __slots__ = ("body", "lost", "message_id", "redelivered")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.redelivered = False
        self.message_id = None
        self.lost = False

    async def ack(self) -> None:
        return None

    async def requeue(self) -> None:
        return None


async def run_window(
    handler: Callable[[Any], Awaitable[None]], deliveries: list[FakeDelivery], window: int
) -> float:
    """CPU microseconds per delivery, ``window`` tasks at a time."""
    gc.collect()
    started = time.process_time()
    for start in range(0, len(deliveries), window):
        tasks = [asyncio.ensure_future(handler(d)) for d in deliveries[start : start + window]]
        await asyncio.gather(*tasks)
    return (time.process_time() - started) / len(deliveries) * 1e6


async def variant(
    name: str, messages: int, window: int, profile: bool, threads: int | None
) -> float:
    queue = f"bench-prof-{uuid.uuid4().hex[:8]}"
    middleware = [] if name == "no middleware" else default_middleware()
    if name == "no time limit":
        middleware = [m for m in middleware if not isinstance(m, aqueue.middleware.TimeLimit)]
    broker = aqueue.RabbitmqBroker(URL, middleware=middleware)

    if threads is not None:

        @broker.actor(queue_name=queue, actor_name="noop")
        def blocking_noop(i: int) -> None:
            return None

    elif name == "untyped actor":

        @broker.actor(queue_name=queue, actor_name="noop")
        async def noop(i):  # type: ignore[no-untyped-def]
            return None

    else:

        @broker.actor(queue_name=queue, actor_name="noop")
        async def noop(i: int) -> None:
            return None

    worker = aqueue.Worker(broker, queues=[queue], concurrency=window, threads=threads or 8)
    await worker.start()
    try:
        plan = worker._plans[0]
        bodies = [
            aqueue.Message(queue_name=queue, actor_name="noop", args=(i,)).encode()
            for i in range(messages)
        ]

        async def handle(delivery: FakeDelivery) -> None:
            await worker._handle(plan, delivery)

        await run_window(handle, [FakeDelivery(b) for b in bodies[:2000]], window)  # warm-up
        if profile:
            profiler = cProfile.Profile()
            profiler.enable()
        runs = [
            await run_window(handle, [FakeDelivery(b) for b in bodies], window) for _ in range(5)
        ]
        if profile:
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
            print(out.getvalue())
        return statistics.median(runs)
    finally:
        await worker.stop()
        await broker.close()
        await delete(queue, f"{queue}.XQ")


async def delete(*queues: str) -> None:
    connection = await aio_pika.connect(URL)
    try:
        channel = await connection.channel()
        for queue in queues:
            await channel.queue_delete(queue)
    finally:
        await connection.close()


async def baseline(messages: int, window: int, threads: int | None) -> float:
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(threads or 1)

    def noop() -> None:
        return None

    async def handle(delivery: FakeDelivery) -> None:
        if threads is not None:
            await loop.run_in_executor(executor, noop)
        await delivery.ack()

    deliveries = [FakeDelivery(b"{}") for _ in range(messages)]
    await run_window(handle, deliveries, window)
    return statistics.median([await run_window(handle, deliveries, window) for _ in range(5)])


async def main(messages: int, window: int, profile: bool, threads: int | None) -> None:
    base = await baseline(messages, window, threads)
    handoff = "" if threads is None else f", run_in_executor on {threads} threads"
    print(f"baseline (task per delivery{handoff}, await ack): {base:6.1f} us CPU per message")
    print(f"{'variant':<22} {'us/msg':>7} {'minus baseline':>15}")
    names = ["default", "no time limit", "no middleware"]
    if threads is None:
        names.append("untyped actor")
    for name in names:
        us = await variant(name, messages, window, profile and name == "default", threads)
        print(f"{name:<22} {us:7.1f} {us - base:15.1f}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--window", type=int, default=100, help="deliveries in flight")
    parser.add_argument("--profile", action="store_true", help="print a cProfile too")
    parser.add_argument("--blocking", action="store_true", help="a def actor, in threads")
    parser.add_argument("--threads", type=int, default=8, help="threads, with --blocking")
    args = parser.parse_args()
    threads = args.threads if args.blocking else None
    asyncio.run(main(args.messages, args.window, args.profile, threads))
