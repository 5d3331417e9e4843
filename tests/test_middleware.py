"""Time and age limits, callbacks, current_message and the middleware stack itself."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import aqueue
from aqueue.middleware import Retries, TimeLimit, default_middleware


async def test_async_actor_over_its_time_limit_is_cancelled(
    broker: aqueue.Broker, queue_name: str
) -> None:
    finished = False

    @broker.actor(queue_name=queue_name, time_limit=0.2, max_retries=0)
    async def slow() -> None:
        nonlocal finished
        await asyncio.sleep(5)
        finished = True

    started = time.monotonic()
    await slow.send()
    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=10)
    assert time.monotonic() - started < 2
    assert not finished
    [letter] = await broker.dead_letters(queue_name)
    assert letter.exception == "TimeLimitExceeded"
    assert letter.error == "actor slow exceeded its time limit of 0.2 s"


async def test_blocking_actor_over_its_time_limit_is_interrupted_and_its_thread_reused(
    broker: aqueue.Broker, queue_name: str
) -> None:
    threads: list[tuple[str, int]] = []
    iterations = 0

    @broker.actor(queue_name=queue_name, time_limit=0.3, max_retries=0)
    def busy_loop() -> None:
        nonlocal iterations
        threads.append(("busy", threading.get_ident()))
        while True:  # Python code: interruptible at any bytecode
            iterations += 1
            time.sleep(0.01)

    @broker.actor(queue_name=queue_name)
    def quick() -> None:
        threads.append(("quick", threading.get_ident()))

    await busy_loop.send()
    started = time.monotonic()
    async with aqueue.Worker(broker, queues=[queue_name], threads=1):
        await broker.join(queue_name, timeout=10)
        await quick.send()
        await broker.join(queue_name, timeout=10)
    assert time.monotonic() - started < 3
    count = iterations
    await asyncio.sleep(0.1)
    assert iterations == count  # the loop really stopped
    assert [t[0] for t in threads] == ["busy", "quick"]
    assert threads[0][1] == threads[1][1]
    [letter] = await broker.dead_letters(queue_name)
    assert letter.exception == "TimeLimitExceeded"


async def test_time_limit_clock_starts_when_the_actor_starts(
    broker: aqueue.Broker, queue_name: str
) -> None:
    done: list[int] = []

    @broker.actor(queue_name=queue_name, time_limit=0.6, max_retries=0)
    def takes_a_while(n: int) -> None:
        time.sleep(0.4)
        done.append(n)

    for n in range(3):
        await takes_a_while.send(n)
    # One thread: the last message waits 0.8 s for it, but runs only 0.4 s.
    async with aqueue.Worker(broker, queues=[queue_name], threads=1):
        await broker.join(queue_name, timeout=10)
    assert sorted(done) == [0, 1, 2]
    assert await broker.dead_letters(queue_name) == []


async def test_per_message_time_limit_and_default(broker: aqueue.Broker, queue_name: str) -> None:
    assert TimeLimit().time_limit == 600.0
    outcomes: list[str] = []

    @broker.actor(queue_name=queue_name, max_retries=0)
    async def nap(seconds: float) -> None:
        await asyncio.sleep(seconds)
        outcomes.append("done")

    await nap.send_with_options(args=(1.0,), time_limit=0.1)
    await nap.send(0.05)
    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=10)
    assert outcomes == ["done"]
    assert len(await broker.dead_letters(queue_name)) == 1


async def test_message_older_than_max_age_is_dead_lettered_not_run(
    broker: aqueue.Broker, queue_name: str
) -> None:
    ran: list[str] = []

    @broker.actor(queue_name=queue_name, max_age=60)
    async def report(label: str) -> None:
        ran.append(label)

    await report.send_with_options(args=("stale",), max_age=0.2)
    await report.send("fresh")
    await asyncio.sleep(0.4)
    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=10)
    assert ran == ["fresh"]
    [letter] = await broker.dead_letters(queue_name)
    assert letter.reason == "max-age-exceeded"
    assert letter.actor_name == "report"
    assert letter.message is not None and letter.message.args == ("stale",)


async def test_on_success_and_on_failure_callbacks(broker: aqueue.Broker, queue_name: str) -> None:
    received: list[tuple[str, dict[str, Any], Any]] = []

    @broker.actor(queue_name=queue_name)
    async def succeeded(message: dict[str, Any], result: int) -> None:
        received.append(("success", message, result))

    @broker.actor(queue_name=queue_name)
    async def failed(message: dict[str, Any], error: dict[str, str]) -> None:
        received.append(("failure", message, error))

    @broker.actor(
        queue_name=queue_name,
        on_success=succeeded,
        on_failure="failed",
        max_retries=1,
        min_backoff=0.05,
    )
    async def divide(a: int, b: int) -> int:
        return a // b

    ok = await divide.send(6, 3)
    bad = await divide.send(1, 0)
    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=10)
    by_kind = {kind: (message, payload) for kind, message, payload in received}
    assert len(received) == 2  # on_failure only after the last retry
    assert by_kind["success"][0]["message_id"] == ok.message_id
    assert by_kind["success"][0]["args"] == [6, 3]
    assert by_kind["success"][1] == 2
    assert by_kind["failure"][0]["message_id"] == bad.message_id
    assert by_kind["failure"][1]["type"] == "ZeroDivisionError"
    assert "division" in by_kind["failure"][1]["message"]


async def test_current_message_in_async_and_blocking_actors(
    broker: aqueue.Broker, queue_name: str
) -> None:
    seen: dict[str, str] = {}

    @broker.actor(queue_name=queue_name)
    async def in_loop() -> None:
        seen["async"] = aqueue.current_message().message_id

    @broker.actor(queue_name=queue_name)
    def in_thread() -> None:
        seen["thread"] = aqueue.current_message().message_id

    a = await in_loop.send()
    b = await in_thread.send()
    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=10)
    assert seen == {"async": a.message_id, "thread": b.message_id}
    with pytest.raises(LookupError, match="only available inside an actor"):
        aqueue.current_message()


class Recorder(aqueue.Middleware):
    actor_options = frozenset({"tag"})

    def __init__(self, events: list[str]) -> None:
        self.events = events

    async def before_enqueue(self, broker: Any, message: aqueue.Message, delay: Any) -> None:
        self.events.append(f"before_enqueue {message.actor_name}")

    async def after_enqueue(self, broker: Any, message: aqueue.Message, delay: Any) -> None:
        self.events.append(f"after_enqueue {message.actor_name}")

    async def before_process_message(self, context: aqueue.MessageContext) -> None:
        self.events.append(f"before_process tag={context.option('tag')}")
        if context.message.args == ("skip",):
            raise aqueue.SkipMessage("not today", dead_letter=False)

    async def after_process_message(self, context: aqueue.MessageContext) -> None:
        self.events.append(f"after_process result={context.result!r}")

    async def after_skip_message(self, context: aqueue.MessageContext) -> None:
        self.events.append("after_skip")

    async def before_worker_boot(self, broker: Any, worker: Any) -> None:
        self.events.append("before_worker_boot")

    async def after_worker_boot(self, broker: Any, worker: Any) -> None:
        self.events.append("after_worker_boot")

    async def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        self.events.append("before_worker_shutdown")

    async def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        self.events.append("after_worker_shutdown")


async def test_custom_middleware_sees_every_hook_and_declares_options(
    broker: aqueue.Broker, queue_name: str
) -> None:
    events: list[str] = []
    with pytest.raises(aqueue.ActorDefinitionError, match="unknown option 'tag'"):

        @broker.actor(queue_name=queue_name, tag="x")
        async def too_early() -> None: ...

    broker.add_middleware(Recorder(events))

    @broker.actor(queue_name=queue_name, tag="blue")
    async def echo(text: str) -> str:
        return text.upper()

    await echo.send("hi")
    await echo.send("skip")
    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=10)
    # Consuming starts before after_worker_boot returns, so processing may come first.
    assert events.index("after_worker_boot") > events.index("before_worker_boot")
    events.remove("after_worker_boot")
    assert events == [
        "before_enqueue echo",
        "after_enqueue echo",
        "before_enqueue echo",
        "after_enqueue echo",
        "before_worker_boot",
        "before_process tag=blue",
        "after_process result='HI'",
        "before_process tag=blue",
        "after_skip",
        "before_worker_shutdown",
        "after_worker_shutdown",
    ]
    assert await broker.ready_count(queue_name + ".XQ") == 0  # skipped without dead-lettering


async def test_broker_with_a_custom_stack(
    make_broker: Callable[..., aqueue.Broker], queue_name: str
) -> None:
    broker = make_broker(middleware=[])
    assert default_middleware()  # the default stack is not empty
    try:
        with pytest.raises(aqueue.ActorDefinitionError, match="unknown option 'max_retries'"):

            @broker.actor(queue_name=queue_name, max_retries=3)
            async def nope() -> None: ...

        calls = 0

        @broker.actor(queue_name=queue_name)
        async def fails() -> None:
            nonlocal calls
            calls += 1
            raise RuntimeError

        await fails.send()
        async with aqueue.Worker(broker, queues=[queue_name]):
            await broker.join(queue_name, timeout=10)
        assert calls == 1  # no Retries in the stack: dead-lettered at once
        assert len(await broker.dead_letters(queue_name)) == 1
    finally:
        await broker.close()


class BrokenRetries(Retries):
    def __init__(self) -> None:
        super().__init__(min_backoff=0.05)
        self.broken = True

    async def after_process_message(self, context: aqueue.MessageContext) -> None:
        if self.broken:
            self.broken = False
            raise ConnectionError("could not publish the retry")
        await super().after_process_message(context)


async def test_message_is_requeued_when_a_middleware_fails_after_processing(
    make_broker: Callable[..., aqueue.Broker], queue_name: str
) -> None:
    broker = make_broker(middleware=[BrokenRetries()])
    attempts = 0
    try:

        @broker.actor(queue_name=queue_name, max_retries=0)
        async def once_more() -> None:
            nonlocal attempts
            attempts += 1
            if attempts == 1:
                raise RuntimeError("first")

        await once_more.send()
        async with aqueue.Worker(broker, queues=[queue_name]):
            await broker.join(queue_name, timeout=10)
        assert attempts == 2
        assert await broker.dead_letters(queue_name) == []
    finally:
        await broker.close()


async def test_an_actors_own_timeout_error_is_not_a_time_limit(
    broker: aqueue.Broker, queue_name: str
) -> None:
    @broker.actor(queue_name=queue_name, time_limit=5, max_retries=0)
    async def waits_for_upstream() -> None:
        await asyncio.wait_for(asyncio.sleep(1), 0.01)

    await waits_for_upstream.send()
    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=10)
    [letter] = await broker.dead_letters(queue_name)
    assert letter.exception == "TimeoutError"


async def test_time_limits_of_many_messages_with_different_limits(
    broker: aqueue.Broker, queue_name: str
) -> None:
    finished: list[float] = []

    @broker.actor(queue_name=queue_name, max_retries=0)
    async def nap(seconds: float) -> None:
        await asyncio.sleep(seconds)
        finished.append(seconds)

    # Later deadlines first, then earlier ones: the timer must move earlier.
    await nap.send_with_options(args=(0.05,), time_limit=2)
    await nap.send_with_options(args=(1.0,), time_limit=0.3)
    await nap.send_with_options(args=(0.01,), time_limit=1)
    await nap.send_with_options(args=(1.0,), time_limit=0.1)
    started = time.monotonic()
    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=10)
    assert time.monotonic() - started < 0.9
    assert sorted(finished) == [0.01, 0.05]
    letters = await broker.dead_letters(queue_name)
    assert sorted(letter.exception or "" for letter in letters) == ["TimeLimitExceeded"] * 2


class RejectRecorder(aqueue.Middleware):
    """Sees rejected messages; fails on the first one, as a hook whose broker is down."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    async def after_reject_message(
        self, broker: Any, message: aqueue.Message, error: Exception, reason: str
    ) -> None:
        self.seen.append((message.actor_name, type(error).__name__, reason))
        if len(self.seen) == 1:
            raise RuntimeError("the hook's own store is down")


async def test_after_reject_message_sees_a_message_that_cannot_run(
    broker: aqueue.Broker, queue_name: str
) -> None:
    """Called before the dead letter; a hook that fails requeues the message (after a
    pause), and the next delivery is rejected again."""
    recorder = RejectRecorder()
    broker.add_middleware(recorder)

    @broker.actor(queue_name=queue_name)
    async def gone(n: int) -> None: ...

    @broker.actor(queue_name=queue_name)
    async def anchor() -> None: ...

    await gone.send(1)
    del broker.actors[gone.actor_name]  # a worker deployed without this actor
    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=10)
    assert recorder.seen == [("gone", "ActorNotFound", "unknown-actor")] * 2
    (letter,) = await broker.dead_letters(queue_name)
    assert letter.reason == "unknown-actor"
