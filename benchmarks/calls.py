"""``actor.call()`` round trips next to raw aio-pika doing the same Direct Reply-To round trip.

Both sides answer from a worker process of their own on an idle queue, on the same
RabbitMQ, in alternating rounds:

- aqueue: ``await echo.call(n)`` against ``aqueue worker`` (an ``async def`` actor that
  returns its argument).
- raw: an aio-pika client that consumes ``amq.rabbitmq.reply-to`` and publishes each request,
  with publisher confirms (as aqueue does), on that channel with ``reply_to`` and a
  correlation id, against an aio-pika server process that publishes the reply and then acks
  the request.

It reports the round trip p50/p90/p99 of sequential calls and the calls per second of
``--callers`` concurrent callers, and aqueue/raw ratios (the machine may be noisy: compare
within one run)::

    python benchmarks/calls.py --calls 500 --concurrent-calls 5000 --callers 100 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aio_pika

import aqueue

URL = os.environ.get("AQUEUE_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")

AQUEUE_WORKER = """
import os

import aqueue

broker = aqueue.RabbitmqBroker(os.environ["AQUEUE_BROKER_URL"])


@broker.actor(queue_name=os.environ["BENCH_QUEUE"], actor_name="echo")
async def echo(n: int) -> int:
    return n
"""

RAW_SERVER = """
import asyncio
import os

import aio_pika


async def main() -> None:
    connection = await aio_pika.connect(os.environ["AQUEUE_BROKER_URL"])
    consuming = await connection.channel()
    await consuming.set_qos(prefetch_count=int(os.environ["BENCH_PREFETCH"]))
    replying = await connection.channel(publisher_confirms=False)
    queue = await consuming.declare_queue(os.environ["BENCH_QUEUE"], durable=True)

    async def on_request(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await replying.default_exchange.publish(
            aio_pika.Message(message.body, correlation_id=message.correlation_id),
            routing_key=message.reply_to or "",
        )
        await message.ack()

    await queue.consume(on_request)
    print("consuming", flush=True)
    await asyncio.Future()


asyncio.run(main())
"""


async def consumers(queue: str) -> int:
    connection = await aio_pika.connect(URL)
    async with connection, connection.channel() as channel:
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.consumer_count or 0)


@contextlib.contextmanager
def process(argv: list[str], env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = (cwd / f"{uuid.uuid4().hex[:6]}.log").open("wb")
    child = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield child
    finally:
        child.terminate()
        try:
            child.wait(20)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        log.close()


async def wait_for_consumer(queue: str, child: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        if child.poll() is not None:
            raise RuntimeError(f"the server process exited with {child.returncode}")
        with contextlib.suppress(aio_pika.exceptions.ChannelClosed):
            if await consumers(queue) > 0:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"no consumer on {queue} within 30 s")
        await asyncio.sleep(0.1)


class RawClient:
    """Direct Reply-To request/reply with aio-pika: one channel, confirms, no queue."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.waiting: dict[str, asyncio.Future[bytes]] = {}

    async def open(self) -> None:
        self.connection = await aio_pika.connect(URL)
        self.channel = await self.connection.channel(publisher_confirms=True)
        reply_to = await self.channel.get_queue("amq.rabbitmq.reply-to", ensure=False)
        await reply_to.consume(self._on_reply, no_ack=True)

    async def _on_reply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        future = self.waiting.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(message.body)

    async def call(self, n: int) -> int:
        correlation_id = uuid.uuid4().hex
        future = asyncio.get_running_loop().create_future()
        self.waiting[correlation_id] = future
        await self.channel.default_exchange.publish(
            aio_pika.Message(
                json.dumps(n).encode(),
                correlation_id=correlation_id,
                reply_to="amq.rabbitmq.reply-to",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=self.queue,
        )
        result: int = json.loads(await asyncio.wait_for(future, 30))
        return result

    async def close(self) -> None:
        await self.connection.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(
    call: Callable[[int], Awaitable[int]], calls: int, concurrent_calls: int, callers: int
) -> dict[str, float]:
    for n in range(20):  # warm both ends up
        assert await call(n) == n
    ms: list[float] = []
    for n in range(calls):
        started = time.perf_counter()
        assert await call(n) == n
        ms.append((time.perf_counter() - started) * 1000)
    per_caller = concurrent_calls // callers

    async def caller(k: int) -> None:
        for n in range(per_caller):
            assert await call(k * per_caller + n) == k * per_caller + n

    started = time.perf_counter()
    await asyncio.gather(*(caller(k) for k in range(callers)))
    wall = time.perf_counter() - started
    return {
        "p50_ms": statistics.median(ms),
        "p90_ms": percentile(ms, 0.90),
        "p99_ms": percentile(ms, 0.99),
        "calls_per_s": per_caller * callers / wall,
    }


async def one_round(side: str, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    queue = f"bench-call-{side}-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "AQUEUE_BROKER_URL": URL,
        "BENCH_QUEUE": queue,
        "BENCH_PREFETCH": str(args.callers),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp), os.environ.get("PYTHONPATH")])),
    }
    if side == "aqueue":
        argv = [sys.executable, "-m", "aqueue", "worker", "bench_call_actors"]
        argv += ["--concurrency", str(args.callers)]
    else:
        argv = [sys.executable, str(tmp / "bench_call_raw.py")]
    try:
        with process(argv, env, tmp) as child:
            if side == "raw":
                await wait_for_consumer(queue, child)
                client = RawClient(queue)
                await client.open()
                try:
                    return await measure(
                        client.call, args.calls, args.concurrent_calls, args.callers
                    )
                finally:
                    await client.close()
            broker = aqueue.RabbitmqBroker(URL)
            try:

                @broker.actor(queue_name=queue, actor_name="echo")
                async def echo(n: int) -> int:
                    return n

                await broker.declare_queue(queue)
                await wait_for_consumer(queue, child)
                return await measure(echo.call, args.calls, args.concurrent_calls, args.callers)
            finally:
                await broker.close()
    finally:
        connection = await aio_pika.connect(URL)
        async with connection, connection.channel() as channel:
            for name in (queue, f"{queue}.XQ"):
                await channel.queue_delete(name)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="sequential calls per round")
    parser.add_argument("--concurrent-calls", type=int, default=5000)
    parser.add_argument("--callers", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"raw": [], "aqueue": []}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        (tmp / "bench_call_actors.py").write_text(AQUEUE_WORKER)
        (tmp / "bench_call_raw.py").write_text(RAW_SERVER)
        for round_ in range(args.rounds):
            for side in ("raw", "aqueue") if round_ % 2 == 0 else ("aqueue", "raw"):
                sample = await one_round(side, args, tmp)
                results[side].append(sample)
                print(
                    f"round {round_ + 1} {side:6} p50 {sample['p50_ms']:.2f} ms, "
                    f"p90 {sample['p90_ms']:.2f} ms, p99 {sample['p99_ms']:.2f} ms, "
                    f"{sample['calls_per_s']:,.0f} calls/s with {args.callers} callers",
                    flush=True,
                )
    summary: dict[str, dict[str, float]] = {}
    for side, samples in results.items():
        summary[side] = {key: statistics.median(s[key] for s in samples) for key in samples[0]}
    print("median of rounds:")
    for key in ("p50_ms", "p90_ms", "p99_ms", "calls_per_s"):
        a, r = summary["aqueue"][key], summary["raw"][key]
        print(f"  {key:12} aqueue {a:10.2f}  raw {r:10.2f}  aqueue/raw {a / r:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"rounds": results, "median": summary}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
