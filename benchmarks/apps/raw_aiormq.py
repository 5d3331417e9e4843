"""Raw aiormq consumers (no aio-pika layer), as floors and experiments for aqueue's worker.

``BENCH_ACK=single`` (default): ``basic_consume`` on aiormq's channel and one
``basic_ack(tag, wait=False)`` per message, which is what aqueue's worker does under
its own code: the floor of its per-message cost.

``BENCH_ACK=multiple``: acks coalesced into one ``basic.ack(multiple=True)`` per
event-loop pass. Each delivery is marked settled; a callback scheduled once per pass
advances the watermark over contiguous settled delivery tags and acks up to it, so a
tag is acked only once it and every tag below it are settled. This shows what
batching acks could gain a worker.
"""

from __future__ import annotations

import asyncio
import os
import signal

import aio_pika
from aiormq.abc import DeliveredMessage
from probe import PROBE


async def main() -> None:
    connection = await aio_pika.connect_robust(os.environ.get("BENCH_URL"))
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=int(os.environ.get("BENCH_PREFETCH", "100")))
    await channel.declare_queue(os.environ["BENCH_QUEUE"], durable=True)
    underlay = await channel.get_underlay_channel()
    loop = asyncio.get_running_loop()
    settled: set[int] = set()
    watermark = 0
    scheduled = False
    acks: set[asyncio.Task[None]] = set()

    def flush() -> None:
        nonlocal watermark, scheduled
        scheduled = False
        tag = watermark
        while tag + 1 in settled:
            tag += 1
            settled.discard(tag)
        if tag > watermark:
            watermark = tag
            task = loop.create_task(underlay.basic_ack(tag, multiple=True))  # type: ignore[arg-type]
            acks.add(task)
            task.add_done_callback(acks.discard)

    async def on_single(message: DeliveredMessage) -> None:
        PROBE.call(0)
        await underlay.basic_ack(message.delivery.delivery_tag, wait=False)  # type: ignore[union-attr,arg-type]

    async def on_message(message: DeliveredMessage) -> None:
        nonlocal scheduled
        PROBE.call(0)
        settled.add(message.delivery.delivery_tag)  # type: ignore[union-attr,arg-type]
        if not scheduled:
            scheduled = True
            loop.call_soon(flush)

    multiple = os.environ.get("BENCH_ACK") == "multiple"
    await underlay.basic_consume(os.environ["BENCH_QUEUE"], on_message if multiple else on_single)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await connection.close()


if __name__ == "__main__":
    asyncio.run(main())
