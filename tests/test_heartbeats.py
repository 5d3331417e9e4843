"""A blocking actor longer than several heartbeat intervals must not cost the connection."""

from __future__ import annotations

import time
from typing import Any

import pytest

import aqueue

from .conftest import RABBITMQ_URL


@pytest.mark.slow
async def test_blocking_actor_for_three_heartbeat_intervals_runs_exactly_once(
    queue_name: str,
) -> None:
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL + "?heartbeat=2")
    runs: list[float] = []

    @broker.actor(queue_name=queue_name)
    def long_blocking_call() -> None:
        runs.append(time.monotonic())
        time.sleep(7)

    reconnects: list[Any] = []
    try:
        await broker.connect()
        assert broker.connection is not None
        broker.connection.reconnect_callbacks.add(lambda *a: reconnects.append(a))
        closes: list[Any] = []
        broker.connection.close_callbacks.add(lambda *a: closes.append(a))
        await long_blocking_call.send()
        async with aqueue.Worker(broker, queues=[queue_name]):
            await broker.join(queue_name, timeout=30)
            # A redelivery after a dropped connection would show up within a moment.
            await broker.join(queue_name, timeout=30)
        assert len(runs) == 1
        assert reconnects == []
        assert closes == []
        assert not broker.connection.is_closed
    finally:
        await broker.close()
