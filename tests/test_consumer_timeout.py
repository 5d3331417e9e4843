"""RabbitMQ's consumer_timeout closes one actor's channel; the worker reopens only that one,
lets the actor finish, and settles RabbitMQ's copy of its message without running it again."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time

import pytest

import aqueue

from .conftest import rabbitmqctl


def _get_consumer_timeout() -> str:
    out = rabbitmqctl("eval", "application:get_env(rabbit, consumer_timeout).").strip()
    match = re.fullmatch(r"\{ok,(\d+)\}", out)
    return match.group(1) if match else "undefined"


def _set_consumer_timeout(value: str) -> None:
    if value == "undefined":
        rabbitmqctl("eval", "application:unset_env(rabbit, consumer_timeout).")
    else:
        rabbitmqctl("eval", f"application:set_env(rabbit, consumer_timeout, {value}).")


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_consumer_timeout_closes_only_the_slow_actors_channel(
    rabbitmq_broker: aqueue.RabbitmqBroker,
    make_queue_name: object,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = rabbitmq_broker
    slow_queue = make_queue_name()  # type: ignore[operator]
    busy_queue = make_queue_name()  # type: ignore[operator]
    runs: list[bool] = []
    first_run_may_end = asyncio.Event()
    busy_done: list[float] = []

    @broker.actor(queue_name=slow_queue, time_limit=None)
    async def long_task() -> None:
        runs.append(aqueue.current_message().message_id in seen_ids)
        seen_ids.add(aqueue.current_message().message_id)
        if len(runs) == 1:
            await first_run_may_end.wait()

    seen_ids: set[str] = set()

    def timed_out() -> bool:
        return any("consumer_timeout" in r.getMessage() for r in caplog.records)

    @broker.actor(queue_name=busy_queue)
    async def heartbeat_task() -> None:
        busy_done.append(time.monotonic())

    original = await asyncio.to_thread(_get_consumer_timeout)
    await asyncio.to_thread(_set_consumer_timeout, "2000")
    try:
        caplog.set_level(logging.INFO, logger="aqueue")
        await long_task.send()
        async with aqueue.Worker(broker, queues=[slow_queue, busy_queue]):
            # RabbitMQ checks the timeout about once a minute.
            deadline = time.monotonic() + 150
            while not timed_out() and time.monotonic() < deadline:
                await heartbeat_task.send()
                await asyncio.sleep(0.5)
            assert timed_out()
            for _ in range(6):  # RabbitMQ's copy comes back meanwhile
                await heartbeat_task.send()
                await asyncio.sleep(0.5)
            first_run_may_end.set()
            await broker.join(slow_queue, timeout=30)
            await broker.join(busy_queue, timeout=30)
        # The run went on when the channel closed, and the copy RabbitMQ delivered again was
        # settled like it, without a second run in this process.
        assert runs == [False]
        assert any("finished it already" in r.getMessage() for r in caplog.records)
        # The other actor's channel was never touched: it kept working throughout.
        gaps = [b - a for a, b in itertools.pairwise(busy_done)]
        assert len(busy_done) > 20
        assert max(gaps) < 3
    finally:
        await asyncio.to_thread(_set_consumer_timeout, original)
    assert await asyncio.to_thread(_get_consumer_timeout) == original
