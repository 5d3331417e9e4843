"""A flapping connection must not throw work away, run it twice, or dead-letter it.

When the worker's connection drops, RabbitMQ requeues every unacknowledged delivery and
delivers it again, marked redelivered. The actors that were running go on; the copy of a
message that runs or finished here is settled like the run it copies, without running
again, and is not counted as a poison suspect by the redelivery limit.
"""

from __future__ import annotations

import asyncio
import collections
import time

import pytest

import aqueue

from ._proxy import FaultProxy
from .conftest import RABBITMQ_URL, RabbitAdmin

MESSAGES = 20
WORK_SECONDS = 2.0
RESET_EVERY = 1.5
FLAP_FOR = 10.0


@pytest.mark.parametrize("kind", ["async", "blocking"])
async def test_a_flapping_connection_neither_cancels_nor_repeats_nor_dead_letters_work(
    kind: str, rabbit: RabbitAdmin, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="aqueue")
    proxy = await FaultProxy("127.0.0.1", 5672).start()
    worker_broker = aqueue.RabbitmqBroker(proxy.url(), reconnect_interval=0.2)
    sender = aqueue.RabbitmqBroker(RABBITMQ_URL)  # sends straight to RabbitMQ: no duplicates
    started: collections.Counter[int] = collections.Counter()
    finished: collections.Counter[int] = collections.Counter()
    cancelled: list[int] = []

    if kind == "async":

        @worker_broker.actor(queue_name=queue_name, actor_name="work")
        async def work(n: int) -> None:
            started[n] += 1
            try:
                await asyncio.sleep(WORK_SECONDS)
            except asyncio.CancelledError:
                cancelled.append(n)
                raise
            finished[n] += 1

    else:

        @worker_broker.actor(queue_name=queue_name, actor_name="work")
        def work(n: int) -> None:
            started[n] += 1
            time.sleep(WORK_SECONDS)
            finished[n] += 1

    @sender.actor(queue_name=queue_name, actor_name="work")
    async def send(n: int) -> None: ...

    async def flap() -> int:
        resets = 0
        deadline = time.monotonic() + FLAP_FOR
        while time.monotonic() < deadline:
            await asyncio.sleep(RESET_EVERY)
            proxy.reset()
            resets += 1
        return resets

    try:
        async with aqueue.Worker(worker_broker, queues=[queue_name], concurrency=5, threads=5):
            for n in range(MESSAGES):
                await send.send(n)
            resets = await flap()
            deadline = time.monotonic() + 60
            while len(finished) < MESSAGES or await rabbit.count(queue_name) > 0:
                assert time.monotonic() < deadline, f"finished {len(finished)} of {MESSAGES}"
                await asyncio.sleep(0.2)
            await asyncio.sleep(2 * WORK_SECONDS)  # a second run would show by now
        dead = await rabbit.count(f"{queue_name}.XQ")
        repeated = sorted(n for n, runs in started.items() if runs > 1)
        print(
            f"\n{kind}: {resets} resets, {MESSAGES} messages, started {sum(started.values())}, "
            f"finished {sum(finished.values())}, cancelled {len(cancelled)}, "
            f"repeated {len(repeated)}, dead-lettered {dead}"
        )
        assert resets >= 5
        assert cancelled == []
        assert dead == 0
        assert sorted(finished) == list(range(MESSAGES))
        assert repeated == [], "a message ran twice in one process"
    finally:
        await worker_broker.close()
        await sender.close()
        await proxy.close()
        await rabbit.delete(f"{queue_name}.XQ")
