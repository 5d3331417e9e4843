"""Testing tools: fail_fast joins, join_all, and the in-memory broker's fast-forward."""

from __future__ import annotations

import traceback

import pytest

import aqueue


class PaymentDeclined(Exception):
    pass


async def test_join_fail_fast_reraises_the_actors_own_exception(
    broker: aqueue.Broker, queue_name: str
) -> None:
    @broker.actor(queue_name=queue_name, max_retries=0)
    async def charge(amount: int) -> None:
        raise PaymentDeclined(f"declined {amount}")

    await charge.send(42)
    async with aqueue.Worker(broker, queues=[queue_name]):
        with pytest.raises(PaymentDeclined, match="declined 42") as info:
            await broker.join(queue_name, timeout=10, fail_fast=True)
    frames = traceback.extract_tb(info.value.__traceback__)
    assert any(frame.name == "charge" for frame in frames)


async def test_join_all_waits_for_messages_that_actors_send_to_other_queues(
    broker: aqueue.Broker, make_queue_name: object
) -> None:
    first, second = make_queue_name(), make_queue_name()  # type: ignore[operator]
    done: list[str] = []

    @broker.actor(queue_name=second)
    async def step_two(n: int) -> None:
        done.append(f"two {n}")

    @broker.actor(queue_name=first)
    async def step_one(n: int) -> None:
        done.append(f"one {n}")
        await step_two.send(n)

    await step_one.send(1)
    async with aqueue.Worker(broker):
        await broker.join_all(timeout=10)
    assert done == ["one 1", "two 1"]


async def test_in_memory_fast_forward_skips_delays_and_retry_backoff(queue_name: str) -> None:
    broker = aqueue.InMemoryBroker()
    attempts = 0

    @broker.actor(queue_name=queue_name, max_retries=3, min_backoff=3600)
    async def flaky() -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionError

    await flaky.send_with_options(delay=86400)
    async with aqueue.Worker(broker):
        assert broker.delayed_count == 1
        assert await broker.fast_forward(3600) == 0  # not due within the hour
        assert await broker.fast_forward() == 1
        await broker.join(queue_name, timeout=5, fast_forward=True)
    assert attempts == 3
    assert broker.delayed_count == 0
    assert await broker.dead_letters(queue_name) == []
