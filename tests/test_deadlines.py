"""The worker's deadline keeper: one timer, bounded memory, exact cancellation."""

from __future__ import annotations

import asyncio

import pytest

from aqueue._deadlines import DeadlineExceeded, Deadlines


async def test_finished_calls_do_not_pile_up() -> None:
    deadlines = Deadlines()

    async def quick() -> int:
        return 1

    for _ in range(5000):
        assert await deadlines.run(quick(), 600) == 1
    assert len(deadlines._heap) <= 1024 + 2
    assert deadlines._live == {}


async def test_only_the_late_call_is_cancelled() -> None:
    deadlines = Deadlines()

    async def nap(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    late = asyncio.ensure_future(deadlines.run(nap(5), 0.05))
    on_time = asyncio.ensure_future(deadlines.run(nap(0.1), 1))
    with pytest.raises(DeadlineExceeded):
        await late
    assert await on_time == 0.1


async def test_a_cancel_from_outside_stays_a_cancel() -> None:
    deadlines = Deadlines()
    task = asyncio.ensure_future(deadlines.run(asyncio.sleep(5), 10))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
