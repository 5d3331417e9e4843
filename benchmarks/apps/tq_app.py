"""The taskiq side: ``taskiq worker tq_app:broker --workers 1 --max-async-tasks 100``.

taskiq-aio-pika's AioPikaBroker with ``qos=BENCH_PREFETCH`` on its own exchange and a
classic queue (as aqueue's), so the peers differ in their code, not in the queue type.
``BENCH_KIND=sync`` declares a blocking ``def`` task (taskiq runs it in its thread pool).
"""

from __future__ import annotations

import os

from probe import PROBE
from taskiq_aio_pika import AioPikaBroker, Exchange, Queue, QueueType

QUEUE = os.environ.get("BENCH_QUEUE", "bench")

broker = AioPikaBroker(
    os.environ.get("BENCH_URL"),
    qos=int(os.environ.get("BENCH_PREFETCH", "100")),
    exchange=Exchange(name=f"{QUEUE}.ex"),
    task_queues=[Queue(name=QUEUE, type=QueueType.CLASSIC)],
    dead_letter_queue=Queue(name=f"{QUEUE}.dlq", type=QueueType.CLASSIC),
)

if os.environ.get("BENCH_KIND", "async") == "async":

    @broker.task(task_name="bench_noop")
    async def bench_noop(i: int) -> None:
        PROBE.call(i)

else:

    @broker.task(task_name="bench_noop")
    def bench_noop(i: int) -> None:
        PROBE.call(i)
