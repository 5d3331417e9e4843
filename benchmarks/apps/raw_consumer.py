"""The raw aio-pika side: ``python raw_consumer.py``, a per-message-ack consumer.

``connect_robust``, one channel, ``set_qos(BENCH_PREFETCH)``, ``queue.consume(callback)``;
the callback calls the probe and ``await message.ack()``. No decoding in drain runs;
in latency runs the body starts with the message's index. ``asyncio.run`` as users
write it, or uvloop with ``BENCH_LOOP=uvloop``.

``BENCH_KIND=sync``: the probe runs in a thread instead, handed off the way an
asyncio program runs blocking code: ``loop.run_in_executor`` on a
``ThreadPoolExecutor(BENCH_THREADS)``, then the ack on the loop. This is the floor of a
blocking actor's thread hand-off, with no task-queue code.
"""

from __future__ import annotations

import asyncio
import os
import signal
from concurrent.futures import ThreadPoolExecutor

import aio_pika
from probe import PROBE


async def main() -> None:
    connection = await aio_pika.connect_robust(os.environ.get("BENCH_URL"))
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=int(os.environ.get("BENCH_PREFETCH", "100")))
    queue = await channel.declare_queue(os.environ["BENCH_QUEUE"], durable=True)
    latency = PROBE.latency
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(int(os.environ.get("BENCH_THREADS", "8")))

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        PROBE.call(int(message.body.split(b" ", 1)[0]) if latency else 0)
        await message.ack()

    async def on_message_in_thread(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await loop.run_in_executor(executor, PROBE.call, 0)
        await message.ack()

    sync = os.environ.get("BENCH_KIND") == "sync"
    await queue.consume(on_message_in_thread if sync else on_message)
    print("raw consumer started", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await connection.close()
    executor.shutdown(wait=False)


if __name__ == "__main__":
    if os.environ.get("BENCH_LOOP") == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
