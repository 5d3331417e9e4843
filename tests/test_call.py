"""``await actor.call(...)``: replies through Direct Reply-To (or futures, in memory)."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

import aqueue
from aqueue import Worker

from .conftest import RABBITMQ_URL, channels_of_pid, connections_of_pid, rabbitmqctl


class Size(msgspec.Struct):
    width: int
    height: int


def waiting_calls(broker: aqueue.Broker) -> int:
    """How many calls the broker still waits a reply for."""
    if isinstance(broker, aqueue.InMemoryBroker):
        return len(broker._replies or {})
    assert isinstance(broker, aqueue.RabbitmqBroker)
    replies = broker._reply_channel
    return 0 if replies is None else len(replies.waiting)


async def test_async_and_blocking_actors_return_their_typed_values(
    broker: aqueue.Broker, queue_name: str
) -> None:
    @broker.actor(queue_name=queue_name)
    async def scale(size: Size, factor: int) -> Size:
        return Size(size.width * factor, size.height * factor)

    @broker.actor(queue_name=queue_name)
    def count_words(text: str) -> dict[str, int]:
        return {word: text.split().count(word) for word in text.split()}

    @broker.actor(queue_name=queue_name)
    async def tomorrow(day: datetime.date) -> datetime.date:
        return day + datetime.timedelta(days=1)

    @broker.actor(queue_name=queue_name)
    def nothing() -> None:
        return None

    async with Worker(broker, queues=[queue_name]):
        size = await scale.call(Size(2, 3), 10, timeout=10)
        words = await count_words.call("a b a", timeout=10)
        day = await tomorrow.call(datetime.date(2026, 2, 28))
        none = await nothing.call()

    assert size == Size(20, 30) and isinstance(size, Size)
    assert words == {"a": 2, "b": 1}
    assert day == datetime.date(2026, 3, 1)
    assert none is None
    assert waiting_calls(broker) == 0


async def test_arguments_are_validated_before_anything_is_sent(
    broker: aqueue.Broker, queue_name: str
) -> None:
    @broker.actor(queue_name=queue_name)
    async def double(n: int) -> int:
        return 2 * n

    with pytest.raises(aqueue.ValidationError):
        await double.call("not a number", timeout=1)
    with pytest.raises(aqueue.ValidationError):
        await double.call(1, timeout=0)
    assert await broker.ready_count(queue_name) == 0


async def test_final_failure_raises_actor_error_with_type_text_and_traceback(
    broker: aqueue.Broker, queue_name: str
) -> None:
    runs: list[int] = []

    @broker.actor(queue_name=queue_name, max_retries=2, min_backoff=0.01, max_backoff=0.02)
    def parse(text: str) -> int:
        runs.append(1)
        return int(text)

    async with Worker(broker, queues=[queue_name]):
        with pytest.raises(aqueue.ActorError) as info:
            await parse.call("twelve", timeout=10)

    error = info.value
    assert len(runs) == 3  # the reply came after the last retry, not before
    assert error.type_name == "ValueError"
    assert error.text == "invalid literal for int() with base 10: 'twelve'"
    assert "ValueError: invalid literal" in str(error) and "parse" in str(error)
    assert "Traceback (most recent call last)" in error.traceback
    assert "return int(text)" in error.traceback
    assert len(await broker.dead_letters(queue_name)) == 1


async def test_a_call_waits_through_retries_until_a_success(
    broker: aqueue.Broker, queue_name: str
) -> None:
    runs: list[int] = []

    @broker.actor(queue_name=queue_name, max_retries=3, min_backoff=0.01, max_backoff=0.02)
    async def flaky() -> str:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError("not yet")
        return "done"

    async with Worker(broker, queues=[queue_name]):
        assert await flaky.call(timeout=10) == "done"
    assert len(runs) == 3


async def test_a_return_value_that_cannot_be_encoded_fails_the_message(
    broker: aqueue.Broker, queue_name: str
) -> None:
    @broker.actor(queue_name=queue_name, max_retries=3, min_backoff=0.01)
    async def opaque() -> Any:
        return object()

    async with Worker(broker, queues=[queue_name]):
        with pytest.raises(aqueue.ActorError) as info:
            await opaque.call(timeout=10)

    assert info.value.type_name == "ValidationError"
    assert "cannot be replied" in info.value.text
    (letter,) = await broker.dead_letters(queue_name)
    assert letter.headers["x-aqueue-exception"] == "ValidationError"


async def test_timeout_raises_and_the_late_reply_is_discarded(
    broker: aqueue.Broker, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    finished = asyncio.Event()

    @broker.actor(queue_name=queue_name)
    async def slow(n: int) -> int:
        await asyncio.sleep(0.5)
        finished.set()
        return n

    caplog.set_level(logging.DEBUG, logger="aqueue.brokers")
    async with Worker(broker, queues=[queue_name]):
        started = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError, match="no reply"):
            await slow.call(1, timeout=0.2)
        assert asyncio.get_running_loop().time() - started < 0.45
        assert waiting_calls(broker) == 0
        await asyncio.wait_for(finished.wait(), 5)
        # The late reply arrives and is dropped; the next call gets its own reply.
        assert await slow.call(2, timeout=10) == 2
    assert any("discarded" in r.getMessage() for r in caplog.records)


async def test_a_call_with_no_worker_times_out(broker: aqueue.Broker, queue_name: str) -> None:
    @broker.actor(queue_name=queue_name)
    async def unanswered() -> None: ...

    with pytest.raises(TimeoutError):
        await unanswered.call(timeout=0.3)
    assert await broker.ready_count(queue_name) == 1  # the work itself stays queued


async def test_many_concurrent_calls_get_their_own_replies(
    broker: aqueue.Broker, queue_name: str
) -> None:
    @broker.actor(queue_name=queue_name)
    async def square(n: int) -> int:
        await asyncio.sleep(0.001 * (n % 7))  # replies come back out of order
        return n * n

    @broker.actor(queue_name=queue_name)
    def label(n: int) -> str:
        return f"label {n}"

    async with Worker(broker, queues=[queue_name], concurrency=50, threads=8):
        squares = await asyncio.gather(*(square.call(n, timeout=30) for n in range(200)))
        labels = await asyncio.gather(*(label.call(n, timeout=30) for n in range(50)))

    assert squares == [n * n for n in range(200)]
    assert labels == [f"label {n}" for n in range(50)]
    assert waiting_calls(broker) == 0


def _amqp_sockets() -> int:
    """TCP connections of this process to port 5672, whatever opened them (Linux /proc)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                established = fields[3] == "01"
                if established and fields[2].endswith(":1628") and fields[9] in inodes:
                    count += 1
    return count


def _queue_names() -> set[str]:
    return set(rabbitmqctl("list_queues", "name").split())


async def test_calls_use_the_publishing_connection_and_no_queue(queue_name: str) -> None:
    worker_broker = aqueue.RabbitmqBroker(RABBITMQ_URL)
    caller = aqueue.RabbitmqBroker(RABBITMQ_URL, shuffle_urls=False)
    try:

        @worker_broker.actor(queue_name=queue_name, actor_name="echo")
        async def echo_here(n: int) -> int:
            return n

        @caller.actor(queue_name=queue_name, actor_name="echo")
        async def echo(n: int) -> int:
            return n

        async with Worker(worker_broker, queues=[queue_name]):
            await caller.connect()
            assert await echo.call(0, timeout=10) == 0
            await asyncio.sleep(0.5)  # let connections of earlier tests finish closing
            pid = os.getpid()
            connections = connections_of_pid(pid)
            channels = channels_of_pid(pid)
            sockets = _amqp_sockets()
            queues = _queue_names()
            results = await asyncio.gather(*(echo.call(n, timeout=30) for n in range(500)))
            assert results == list(range(500))
            # At most as many: connections of earlier tests may still be closing.
            assert connections_of_pid(pid) <= connections
            assert channels_of_pid(pid) <= channels
            assert _amqp_sockets() <= sockets
            assert caller.consuming_connection is None  # the caller holds one connection
            # Other tests may run meanwhile: only names like theirs (a random hex suffix, or
            # the limit and group queues of such names) may have appeared; not a
            # server-named (amq.gen-...) nor a fixed-name queue.
            new = _queue_names() - queues
            theirs = r"(aqueue\.(limit|group)\.)?([a-z][a-z-]*-)?[0-9a-f]{8,}[\w.-]*"
            assert all(re.fullmatch(theirs, n) for n in new), new
        replies = caller._reply_channel
        assert replies is not None and replies.address.startswith("amq.rabbitmq.reply-to.")
    finally:
        await caller.close()
        await worker_broker.close()


async def test_a_reply_channel_lost_with_its_connection_is_opened_again(
    queue_name: str,
) -> None:
    caller = aqueue.RabbitmqBroker(RABBITMQ_URL, reconnect_interval=0.1)
    try:

        @caller.actor(queue_name=queue_name)
        async def echo(n: int) -> int:
            return n

        @caller.actor(queue_name=queue_name)
        async def slow() -> None:
            await asyncio.sleep(1)

        async with Worker(caller, queues=[queue_name]):
            assert await echo.call(1, timeout=10) == 1
            replies = caller._reply_channel
            assert replies is not None and replies.channel is not None
            first = replies.channel
            waiting = asyncio.ensure_future(slow.call(timeout=10))
            await asyncio.sleep(0.1)
            await first.close()
            # Its reply cannot arrive on another channel: it fails now, not at its timeout.
            with pytest.raises(aqueue.BrokerConnectionError, match="lost"):
                await asyncio.wait_for(waiting, 2)
            assert await echo.call(2, timeout=10) == 2
            assert replies.channel is not None and replies.channel is not first
    finally:
        await caller.close()


async def test_a_message_skipped_to_the_dead_letters_raises_actor_error(
    broker: aqueue.Broker, queue_name: str
) -> None:
    @broker.actor(queue_name=queue_name)
    async def fresh_only() -> int:
        return 1

    calling = asyncio.ensure_future(fresh_only.call_with_options(timeout=10, max_age=0.05))
    await asyncio.sleep(0.2)  # the message is too old by the time a worker starts
    async with Worker(broker, queues=[queue_name]):
        with pytest.raises(aqueue.ActorError) as info:
            await calling
    assert info.value.type_name == "SkipMessage"
    assert len(await broker.dead_letters(queue_name)) == 1


async def test_a_call_the_worker_cannot_run_is_answered_at_once(
    broker: aqueue.Broker, queue_name: str
) -> None:
    """A worker deployed without the actor dead-letters the message unrun; the caller
    gets that error at once instead of waiting for its timeout."""

    @broker.actor(queue_name=queue_name)
    async def only_on_the_sender() -> int:
        return 1

    @broker.actor(queue_name=queue_name)
    async def anchor() -> None: ...  # keeps the queue among the worker's

    del broker.actors[only_on_the_sender.actor_name]  # as in a worker without it
    async with Worker(broker, queues=[queue_name]):
        started = time.monotonic()
        with pytest.raises(aqueue.ActorError) as info:
            await only_on_the_sender.call(timeout=20)
        assert time.monotonic() - started < 5
    assert info.value.type_name == "ActorNotFound"
    (letter,) = await broker.dead_letters(queue_name)
    assert letter.reason == "unknown-actor"


async def test_reply_to_is_not_an_actor_option_and_call_needs_the_replies_middleware(
    make_broker: Callable[..., aqueue.Broker], queue_name: str
) -> None:
    broker = make_broker()
    with pytest.raises(aqueue.ActorDefinitionError, match="reply_to"):

        @broker.actor(queue_name=queue_name, reply_to="somewhere")
        async def fixed_address() -> None: ...

    bare = make_broker(middleware=[])

    @bare.actor(queue_name=queue_name)
    async def unanswerable() -> None: ...

    with pytest.raises(aqueue.ValidationError, match="Replies middleware"):
        await unanswerable.call(timeout=1)


SLOW_MODULE = """
import asyncio
import os

import aqueue

broker = aqueue.RabbitmqBroker()


@broker.actor(queue_name=os.environ["CALL_QUEUE"], actor_name="slow_double")
async def slow_double(n: int) -> int:
    with open(os.environ["CALL_OUT"], "a") as out:
        out.write(f"started {os.getpid()}\\n")
    await asyncio.sleep(float(os.environ["CALL_SLEEP"]))
    return 2 * n
"""


def _start_call_worker(tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "aqueue", "worker", "slow_calls", "--log-level", "warning"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_a_worker_killed_mid_call_is_redelivered_and_the_call_still_returns(
    rabbitmq_broker: aqueue.RabbitmqBroker, queue_name: str, tmp_path: Path
) -> None:
    (tmp_path / "slow_calls.py").write_text(SLOW_MODULE)
    out = tmp_path / "out.txt"
    env = {
        **os.environ,
        "AQUEUE_BROKER_URL": RABBITMQ_URL,
        "CALL_QUEUE": queue_name,
        "CALL_OUT": str(out),
        "CALL_SLEEP": "1.0",
        "PYTHONPATH": str(tmp_path),
    }

    @rabbitmq_broker.actor(queue_name=queue_name, actor_name="slow_double")
    async def slow_double(n: int) -> int:
        raise NotImplementedError  # runs in the worker processes

    def starts() -> list[str]:
        return out.read_text().splitlines() if out.exists() else []

    victim = _start_call_worker(tmp_path, env)
    survivor = None
    try:
        call = asyncio.ensure_future(slow_double.call(21, timeout=30))
        deadline = time.monotonic() + 20
        while not starts():
            assert time.monotonic() < deadline, "the first worker never started the message"
            assert not call.done()
            await asyncio.sleep(0.02)
        killed_at = time.monotonic()
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        assert not call.done()
        survivor = _start_call_worker(tmp_path, env)
        assert await call == 42
        waited = time.monotonic() - killed_at
    finally:
        for worker in (victim, survivor):
            if worker is not None and worker.poll() is None:
                worker.kill()
                worker.wait(10)
    # Started by the killed worker, then again (redelivered) by the one that answered.
    assert [line.split()[1] for line in starts()] == [str(victim.pid), str(survivor.pid)]
    assert waited < 20, f"the call took {waited:.1f} s after the kill"
    assert waiting_calls(rabbitmq_broker) == 0
