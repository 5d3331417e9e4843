"""The aqueue side: ``python -m aqueue worker aq_app``, one no-op actor on ``BENCH_QUEUE``.

``BENCH_KIND`` is ``async`` (an ``async def`` actor, the default) or ``sync`` (a blocking
``def`` actor in the worker's thread pool). Default middleware on, as users run it.
"""

from __future__ import annotations

import os

from probe import PROBE

import aqueue

broker = aqueue.RabbitmqBroker(os.environ.get("BENCH_URL"))
QUEUE = os.environ.get("BENCH_QUEUE", "bench")

if os.environ.get("BENCH_KIND", "async") == "async":

    @broker.actor(queue_name=QUEUE, actor_name="bench_noop")
    async def bench_noop(i: int) -> None:
        PROBE.call(i)

else:

    @broker.actor(queue_name=QUEUE, actor_name="bench_noop")
    def bench_noop(i: int) -> None:
        PROBE.call(i)
