"""The Dramatiq side: ``dramatiq dq_app --processes 1 --threads 8``.

Its RabbitmqBroker with default middleware; ``BENCH_KIND=async`` adds the ``AsyncIO``
middleware and declares an ``async def`` actor, as Dramatiq's docs describe.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from probe import PROBE

broker = RabbitmqBroker(url=os.environ.get("BENCH_URL"))
QUEUE = os.environ.get("BENCH_QUEUE", "bench")

if os.environ.get("BENCH_KIND", "sync") == "async":
    from dramatiq.middleware.asyncio import AsyncIO

    broker.add_middleware(AsyncIO())
    dramatiq.set_broker(broker)

    @dramatiq.actor(queue_name=QUEUE, actor_name="bench_noop", max_retries=0)
    async def bench_noop(i: int) -> None:
        PROBE.call(i)

else:
    dramatiq.set_broker(broker)

    @dramatiq.actor(queue_name=QUEUE, actor_name="bench_noop", max_retries=0)
    def bench_noop(i: int) -> None:
        PROBE.call(i)
