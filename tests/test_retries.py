"""Retries with backoff, throws, retry_when, dead letters and replaying them."""

from __future__ import annotations

import itertools
import time

import pytest

import aqueue
from aqueue.middleware import Retries


def test_backoff_is_exponential_with_jitter_within_bounds() -> None:
    retries = Retries()
    for n in range(30):
        samples = [retries.backoff(n, 1.0, 60.0) for _ in range(200)]
        assert all(1.0 <= s <= 60.0 for s in samples)
        upper = min(60.0, 2.0 ** (n + 1))
        assert max(samples) <= upper
        assert min(samples) >= max(1.0, upper * 0.5)
    # Jitter: not all the same.
    assert len({retries.backoff(3, 1.0, 60.0) for _ in range(20)}) > 1


def test_retry_defaults_suit_production() -> None:
    retries = Retries()
    assert retries.max_retries == 20
    assert retries.min_backoff == 15.0
    assert retries.max_backoff == 3600.0


async def test_failing_actor_is_retried_with_backoff_then_dead_lettered(
    broker: aqueue.Broker, queue_name: str
) -> None:
    calls: list[tuple[float, str, int]] = []

    @broker.actor(queue_name=queue_name, max_retries=3, min_backoff=0.2, max_backoff=0.4)
    async def flaky(n: int) -> None:
        message = aqueue.current_message()
        calls.append((time.monotonic(), message.message_id, message.options.get("retries", 0)))
        raise ConnectionError(f"upstream down {n}")

    sent = await flaky.send(1)
    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=20)  # also waits for the scheduled retries
    assert [c[2] for c in calls] == [0, 1, 2, 3]
    assert {c[1] for c in calls} == {sent.message_id}
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(calls)]
    assert all(0.2 <= gap <= 0.4 + 0.25 for gap in gaps), gaps

    letters = await broker.dead_letters(queue_name)
    assert len(letters) == 1
    letter = letters[0]
    assert letter.message_id == sent.message_id
    assert letter.reason == "failed"
    assert letter.actor_name == "flaky"
    assert letter.exception == "ConnectionError"
    assert letter.error == "upstream down 1"
    assert letter.retries == 3
    assert letter.traceback is not None and "ConnectionError: upstream down 1" in letter.traceback
    assert letter.headers["x-aqueue-queue"] == queue_name
    assert letter.failed_at is not None
    assert "x-aqueue-first-failed-at" in letter.headers
    assert letter.message is not None and letter.message.options["retries"] == 3
    # Reading does not remove.
    assert await broker.ready_count(queue_name + ".XQ") == 1


async def test_throws_skips_retries(broker: aqueue.Broker, queue_name: str) -> None:
    calls = 0

    @broker.actor(queue_name=queue_name, throws=(KeyError,), min_backoff=0.1)
    async def lookup() -> None:
        nonlocal calls
        calls += 1
        raise KeyError("missing")

    await lookup.send()
    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=10)
    assert calls == 1
    [letter] = await broker.dead_letters(queue_name)
    assert letter.exception == "KeyError"
    assert letter.retries == 0


async def test_retry_when_replaces_the_count_rule(broker: aqueue.Broker, queue_name: str) -> None:
    seen: list[tuple[int, str]] = []

    def only_timeouts(retries: int, exc: BaseException) -> bool:
        seen.append((retries, type(exc).__name__))
        return isinstance(exc, TimeoutError) and retries < 2

    attempts = 0

    @broker.actor(queue_name=queue_name, retry_when=only_timeouts, min_backoff=0.05)
    async def call_api() -> None:
        nonlocal attempts
        attempts += 1
        raise TimeoutError

    await call_api.send()
    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=10)
    assert attempts == 3
    assert seen == [(0, "TimeoutError"), (1, "TimeoutError"), (2, "TimeoutError")]


async def test_per_message_options_override_the_actor(
    broker: aqueue.Broker, queue_name: str
) -> None:
    attempts = 0

    @broker.actor(queue_name=queue_name, max_retries=10, min_backoff=60)
    async def fails() -> None:
        nonlocal attempts
        attempts += 1
        raise RuntimeError

    await fails.send_with_options(max_retries=1, min_backoff=0.05, max_backoff=0.1)
    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=10)
    assert attempts == 2


async def test_retry_when_and_throws_cannot_travel_in_a_message(
    broker: aqueue.Broker,
) -> None:
    @broker.actor
    async def task() -> None: ...

    with pytest.raises(aqueue.ValidationError, match="only be set on the actor"):
        await task.send_with_options(throws=(ValueError,))


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": 1.5}, "max_retries"),
        ({"min_backoff": "soon"}, "min_backoff"),
        ({"retry_when": 3}, "retry_when"),
        ({"throws": "ValueError"}, "throws"),
        ({"time_limit": 0}, "time_limit"),
        ({"max_age": -5}, "max_age"),
        ({"on_success": "not valid!"}, "actor name"),
    ],
)
def test_bad_middleware_options_fail_at_decoration(
    broker: aqueue.Broker, options: dict[str, object], match: str
) -> None:
    with pytest.raises(aqueue.ActorDefinitionError, match=match):

        @broker.actor(**options)
        async def task() -> None: ...


async def test_dead_letters_can_be_requeued_after_a_fix_and_then_succeed(
    broker: aqueue.Broker, queue_name: str
) -> None:
    fixed = False
    done: list[int] = []

    @broker.actor(queue_name=queue_name, max_retries=1, min_backoff=0.05)
    async def process(n: int) -> None:
        if not fixed:
            raise ValueError("bug")
        done.append(n)

    first = await process.send(1)
    second = await process.send(2)
    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=10)
        assert {d.message_id for d in await broker.dead_letters(queue_name)} == {
            first.message_id,
            second.message_id,
        }
        fixed = True
        assert await broker.requeue_dead_letters(queue_name, message_ids=[first.message_id]) == 1
        await broker.join(queue_name, timeout=10)
        assert done == [1]
        assert [d.message_id for d in await broker.dead_letters(queue_name)] == [second.message_id]
        assert await broker.requeue_dead_letters(queue_name) == 1
        await broker.join(queue_name, timeout=10)
    assert sorted(done) == [1, 2]
    assert await broker.ready_count(queue_name + ".XQ") == 0


async def test_requeued_dead_letter_gets_its_retries_back(
    broker: aqueue.Broker, queue_name: str
) -> None:
    attempts = 0

    @broker.actor(queue_name=queue_name, max_retries=1, min_backoff=0.05)
    async def always() -> None:
        nonlocal attempts
        attempts += 1
        raise RuntimeError

    await always.send()
    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=10)
        assert attempts == 2
        assert await broker.requeue_dead_letters(queue_name) == 1
        await broker.join(queue_name, timeout=10)
    assert attempts == 4


async def test_dead_letters_can_be_selected_by_actor_and_purged_by_age(
    broker: aqueue.Broker, queue_name: str
) -> None:
    @broker.actor(queue_name=queue_name, max_retries=0)
    async def alpha() -> None:
        raise RuntimeError("a")

    @broker.actor(queue_name=queue_name, max_retries=0)
    async def beta() -> None:
        raise RuntimeError("b")

    await alpha.send()
    await beta.send()
    b2 = await beta.send()
    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=10)
    info = await broker.queue_info(queue_name + ".XQ")
    assert info is not None and info.ready == 3 and info.consumers == 0
    assert await broker.queue_info("no-such-queue-here") is None
    # Nothing failed an hour ago.
    assert await broker.purge_dead_letters(queue_name, older_than=3600) == 0
    assert await broker.purge_dead_letters(queue_name, message_ids=[b2.message_id]) == 1
    assert await broker.requeue_dead_letters(queue_name, actor_name="alpha") == 1
    remaining = await broker.dead_letters(queue_name)
    assert [d.actor_name for d in remaining] == ["beta"]
    assert await broker.purge_dead_letters(queue_name, older_than=0) == 1
    assert await broker.dead_letters(queue_name) == []
