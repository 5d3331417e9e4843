"""Limits shared by every worker: concurrency and rate, held by RabbitMQ's token queues."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aio_pika
import pytest

import aqueue
from aqueue.brokers.rabbitmq.limit_queues import _arguments, park_queue_name, token_queue_name
from aqueue.middleware import Limits

from .conftest import RABBITMQ_URL, RabbitAdmin, restart_rabbitmq, unique_name


def _max_overlap(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def _most_in_a_window(starts: list[float], window: float) -> int:
    starts = sorted(starts)
    return max(sum(1 for t in starts[i:] if t < s + window) for i, s in enumerate(starts))


async def _wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@pytest.fixture
async def limit_name(rabbit: RabbitAdmin) -> AsyncIterator[str]:
    """A limit name of this test's own; its token queues are deleted afterwards."""
    name = unique_name("limit")
    yield name
    async with rabbit.connection.channel() as channel:
        for suffix in ("c1", "c2", "c3", "r4-1000ms", "r3-500ms"):
            queue = f"aqueue.limit.{name}.{suffix}"
            for queue_or_one_of_its in (queue, queue + ".park", queue + ".filled"):
                await channel.queue_delete(queue_or_one_of_its)


# -- the value and the option -------------------------------------------------------------


def test_limit_values_are_checked() -> None:
    assert aqueue.Limit("api", rate="10/s").rate == aqueue.limits.Rate(10, 1.0)
    assert aqueue.Limit("api", rate="100/m").rate == aqueue.limits.Rate(100, 60.0)
    assert aqueue.Limit("api", rate="5000/h").rate == aqueue.limits.Rate(5000, 3600.0)
    assert aqueue.Limit("api", rate=(5, 30)).rate == aqueue.limits.Rate(5, 30.0)
    assert aqueue.Limit("api", concurrency=2) == aqueue.Limit("api", concurrency=2)
    assert repr(aqueue.Limit("api", concurrency=2, rate="5/30s")) == (
        "Limit('api', concurrency=2, rate='5/30s')"
    )
    bad: list[tuple[str, dict[str, object], str]] = [
        ("api", {}, "give concurrency, rate or both"),
        ("api", {"concurrency": 0}, "positive int"),
        ("api", {"concurrency": 1.5}, "positive int"),
        ("api", {"rate": "ten per second"}, "rate must be like"),
        ("api", {"rate": "0/s"}, "positive int"),
        ("api", {"rate": "1/0.01s"}, "period"),
        ("api", {"rate": "1/d"}, "rate must be like"),
        ("no spaces", {"concurrency": 1}, "name"),
        ("", {"concurrency": 1}, "name"),
    ]
    for name, options, text in bad:
        with pytest.raises(ValueError, match=text):
            aqueue.Limit(name, **options)  # type: ignore[arg-type]


def test_limits_are_an_actor_option_of_limit_values() -> None:
    broker = aqueue.InMemoryBroker()
    with pytest.raises(aqueue.ActorDefinitionError, match=r"list of aqueue\.Limit"):
        broker.actor(limits=["api"])(lambda: None)
    with pytest.raises(aqueue.ActorDefinitionError, match="named twice"):
        broker.actor(limits=[aqueue.Limit("a", concurrency=1), aqueue.Limit("a", rate="1/s")])(
            lambda: None
        )
    limited = broker.actor(actor_name="limited", limits=aqueue.Limit("a", concurrency=1))(
        lambda: None
    )
    assert limited.options["limits"] == (aqueue.Limit("a", concurrency=1),)
    with pytest.raises(aqueue.ValidationError, match="only be set on the actor"):
        broker.normalize_options(
            {"limits": [aqueue.Limit("b", concurrency=9)]}, owner="m", for_message=True
        )


# -- one process, both brokers ------------------------------------------------------------


async def test_concurrency_and_rate_hold_in_one_worker(
    broker: aqueue.Broker, queue_name: str, limit_name: str
) -> None:
    spans: list[tuple[float, float]] = []
    starts: list[float] = []

    @broker.actor(queue_name=queue_name, limits=[aqueue.Limit(limit_name, concurrency=2)])
    async def bounded(n: int) -> None:
        started = time.monotonic()
        await asyncio.sleep(0.15)
        spans.append((started, time.monotonic()))

    @broker.actor(queue_name=queue_name, limits=[aqueue.Limit(limit_name, rate=(3, 0.5))])
    async def paced(n: int) -> None:
        starts.append(time.monotonic())

    await bounded.send_many([(i,) for i in range(6)])
    await paced.send_many([(i,) for i in range(7)])
    async with aqueue.Worker(broker, queues=[queue_name]):
        await _wait_until(lambda: len(spans) == 6 and len(starts) == 7, 20, "the runs")
    assert _max_overlap(spans) == 2
    assert _most_in_a_window(starts, 0.5) == 3


async def test_a_rate_holds_when_runs_wait_for_a_thread(
    make_broker: Callable[..., aqueue.Broker],
    queue_name: str,
    limit_name: str,
    rabbit: RabbitAdmin,
) -> None:
    # Tokens taken while every thread is busy: the runs start late, together, and must
    # not count against the next window as if they had started when their token was taken.
    broker = make_broker(middleware=[Limits(wait=3.0, max_waiting=10)])
    busy_queue = unique_name("q")
    rabbit.created.add(busy_queue)
    starts: list[float] = []

    @broker.actor(queue_name=busy_queue)
    def busy(n: int) -> None:
        time.sleep(0.9)

    @broker.actor(queue_name=queue_name, limits=[aqueue.Limit(limit_name, rate="4/s")])
    def paced(n: int) -> None:
        starts.append(time.monotonic())

    async with aqueue.Worker(broker, queues=[busy_queue, queue_name], threads=4):
        await busy.send_many([(i,) for i in range(4)])
        await asyncio.sleep(0.1)  # the 4 threads are busy for 0.9 s
        await paced.send_many([(i,) for i in range(4)])
        await asyncio.sleep(0.9)
        await paced.send_many([(i,) for i in range(4, 8)])
        await _wait_until(lambda: len(starts) == 8, 20, "the paced runs")
    assert _most_in_a_window(starts, 1.0) <= 4


async def test_200_messages_waiting_on_a_limit_of_1_do_not_stop_other_actors(
    broker: aqueue.Broker, queue_name: str, limit_name: str
) -> None:
    spans: list[tuple[float, float]] = []
    other_ran = asyncio.Event()

    @broker.actor(queue_name=queue_name, limits=[aqueue.Limit(limit_name, concurrency=1)])
    async def one_at_a_time(n: int) -> None:
        started = time.monotonic()
        await asyncio.sleep(0.1)
        spans.append((started, time.monotonic()))

    @broker.actor(queue_name=queue_name)
    async def other() -> None:
        other_ran.set()

    await one_at_a_time.send_many([(i,) for i in range(200)])
    await other.send()
    started = time.monotonic()
    async with aqueue.Worker(broker, queues=[queue_name], concurrency=10):
        await asyncio.wait_for(other_ran.wait(), 10)
        took = time.monotonic() - started
        ran = len(spans)
    print(f"the other actor ran {took:.2f} s after the start, behind 200 limited messages")
    assert took < 5, f"the other actor waited {took:.1f} s behind the limited messages"
    assert ran <= took / 0.1 + 1  # the limit held meanwhile (a run takes 0.1 s)
    assert _max_overlap(spans) == 1


# -- RabbitMQ: several processes ----------------------------------------------------------

WORKER_MODULE = """
import asyncio
import os
import pathlib
import time

import aqueue

QUEUE = os.environ["LIMIT_QUEUE"]
NAME = os.environ["LIMIT_NAME"]
OUT = os.environ["LIMIT_OUT"]
broker = aqueue.RabbitmqBroker()


def record(*fields: object) -> None:
    with open(OUT, "a") as f:
        f.write(" ".join(str(x) for x in (*fields, os.getpid())) + "\\n")


@broker.actor(queue_name=QUEUE, limits=[aqueue.Limit(NAME, concurrency=2)])
async def bounded(n: int) -> None:
    started = time.time()
    await asyncio.sleep(0.3)
    record("bounded", started, time.time())


@broker.actor(queue_name=QUEUE, limits=[aqueue.Limit(NAME + "-rate", rate="4/s")])
async def paced(n: int) -> None:
    record("paced", time.time())


@broker.actor(queue_name=QUEUE, limits=[aqueue.Limit(NAME + "-hog", concurrency=1)])
async def hog(seconds: float) -> None:
    flag = pathlib.Path(OUT + ".hogged")
    if flag.exists():
        seconds = 0  # the copy redelivered after the kill: quick this time
    flag.touch()
    record("hog", time.time())
    await asyncio.sleep(seconds)
"""


def _records(out: Path, kind: str) -> list[list[str]]:
    lines = out.read_text().splitlines() if out.exists() else []
    return [line.split()[1:] for line in lines if line.startswith(kind + " ")]


async def test_limits_hold_across_two_worker_processes_and_a_killed_worker_leaks_nothing(
    tmp_path: Path, queue_name: str, limit_name: str, rabbit: RabbitAdmin
) -> None:
    (tmp_path / "limited.py").write_text(textwrap.dedent(WORKER_MODULE))
    out = tmp_path / "out.txt"
    env = {
        **os.environ,
        "AQUEUE_BROKER_URL": RABBITMQ_URL,
        "LIMIT_QUEUE": queue_name,
        "LIMIT_NAME": limit_name,
        "LIMIT_OUT": str(out),
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "aqueue", "worker", "limited", "--log-level", "warning"]
    workers = [
        await asyncio.create_subprocess_exec(
            *command, cwd=tmp_path, env=env, stderr=subprocess.DEVNULL
        )
        for _ in range(2)
    ]
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL)

    async def placeholder(*args: object) -> None: ...

    bounded, paced, hog = (
        broker.actor(actor_name=name, queue_name=queue_name)(placeholder)
        for name in ("bounded", "paced", "hog")
    )
    try:
        # Both workers consume before anything is sent: else the first one up may take all.
        await broker.declare_queue(queue_name)
        deadline = time.monotonic() + 30
        while (info := await broker.queue_info(queue_name)) is None or info.consumers < 2:
            assert time.monotonic() < deadline, "the two workers did not start consuming"
            await asyncio.sleep(0.05)
        await bounded.send_many([(i,) for i in range(12)])
        await paced.send_many([(i,) for i in range(12)])
        await _wait_until(
            lambda: len(_records(out, "bounded")) == 12 and len(_records(out, "paced")) == 12,
            60,
            "the limited runs",
        )
        spans = [(float(r[0]), float(r[1])) for r in _records(out, "bounded")]
        assert _max_overlap(spans) == 2
        assert len({r[2] for r in _records(out, "bounded")}) == 2  # both processes ran some
        starts = [float(r[0]) for r in _records(out, "paced")]
        assert _most_in_a_window(starts, 1.0) <= 4
        assert len({r[1] for r in _records(out, "paced")}) == 2
        print(
            f"concurrency=2 over 2 processes: most running at once {_max_overlap(spans)}; "
            f'rate="4/s": most starts in a 1 s window {_most_in_a_window(starts, 1.0)}'
        )

        # A worker killed while it holds the hog's only token: the token comes back.
        await hog.send(3600.0)
        await _wait_until(lambda: len(_records(out, "hog")) == 1, 20, "the hog to start")
        victim_pid = int(_records(out, "hog")[0][1])
        victim = next(w for w in workers if w.pid == victim_pid)
        victim.send_signal(signal.SIGKILL)
        await asyncio.wait_for(victim.wait(), 10)
        killed_at = time.time()
        await hog.send(0.0)
        await _wait_until(lambda: len(_records(out, "hog")) >= 2, 20, "the limit to recover")
        recovered_in = float(_records(out, "hog")[1][0]) - killed_at
        print(f"the limit recovered {recovered_in:.3f} s after the kill")
        assert recovered_in < 10
    finally:
        await broker.close()
        for worker in workers:
            if worker.returncode is None:
                worker.send_signal(signal.SIGTERM)
                await asyncio.wait_for(worker.wait(), 30)
        async with rabbit.connection.channel() as channel:
            for suffix in ("-rate.r4-1000ms", ".c2", "-hog.c1"):
                await channel.queue_delete(f"aqueue.limit.{limit_name}{suffix}")
                await channel.queue_delete(f"aqueue.limit.{limit_name}{suffix}.filled")
            await channel.queue_delete(f"aqueue.limit.{limit_name}-rate.r4-1000ms.park")


async def test_a_token_queue_is_filled_once_by_processes_that_start_together(
    limit_name: str, rabbit: RabbitAdmin
) -> None:
    limit = aqueue.Limit(limit_name, concurrency=3)
    brokers = [aqueue.RabbitmqBroker(RABBITMQ_URL) for _ in range(4)]
    try:
        await asyncio.gather(*(b.prepare_tokens(limit.tokens()) for b in brokers))
        [tokens] = limit.tokens()
        assert await rabbit.count(token_queue_name(tokens)) == 3
        # Held tokens are not ready; none is added while they are held.
        holds = [await brokers[0].take_token(tokens, wait=0) for _ in range(3)]
        assert all(h is not None for h in holds)
        assert await brokers[1].take_token(tokens, wait=0.2) is None
        await brokers[2].prepare_tokens(limit.tokens())
        assert await rabbit.count(token_queue_name(tokens)) == 0
        for hold in holds:
            assert hold is not None
            await hold.release()
        await _wait_for_count(rabbit, token_queue_name(tokens), 3)
    finally:
        for b in brokers:
            await b.close()


async def test_a_deleted_token_queue_is_declared_and_filled_again(
    limit_name: str, rabbit: RabbitAdmin
) -> None:
    limit = aqueue.Limit(limit_name, rate="4/s")
    [tokens] = limit.tokens()
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL)
    try:
        used = await broker.take_token(tokens, wait=0)
        assert used is not None
        await used.release()  # parked for its period
        assert await rabbit.count(park_queue_name(tokens)) == 1
        await rabbit.delete(token_queue_name(tokens))
        hold = await broker.take_token(tokens, wait=2)
        assert hold is not None
        # Filled again with 4 tokens; the parked one went with the pool it belonged to.
        assert await rabbit.count(token_queue_name(tokens)) == 3
        assert await rabbit.count(park_queue_name(tokens)) == 0
        await hold.release()
    finally:
        await broker.close()


async def test_a_pool_left_half_filled_is_filled_again(
    rabbit: RabbitAdmin, queue_name: str, limit_name: str
) -> None:
    # Its filler died (or a publish failed) between declaring the token queue and
    # publishing the last token: the pool has no marker, and is filled again.
    limit = aqueue.Limit(limit_name, concurrency=2)
    [tokens] = limit.tokens()
    async with rabbit.connection.channel() as channel:
        for queue, arguments in _arguments(tokens).items():
            await channel.declare_queue(queue, durable=True, arguments=arguments)
        await channel.default_exchange.publish(
            aio_pika.Message(b""), routing_key=token_queue_name(tokens)
        )
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL)
    spans: list[tuple[float, float]] = []

    @broker.actor(queue_name=queue_name, limits=[limit])
    async def limited(n: int) -> None:
        started = time.monotonic()
        await asyncio.sleep(0.1)
        spans.append((started, time.monotonic()))

    try:
        await limited.send_many([(i,) for i in range(6)])
        async with aqueue.Worker(broker, queues=[queue_name]):
            await broker.join(queue_name, timeout=15)
        assert len(spans) == 6
        assert _max_overlap(spans) == 2
        await _wait_for_count(rabbit, token_queue_name(tokens), 2)  # 2, not 3
    finally:
        await broker.close()


async def test_a_cancelled_take_keeps_the_tokens_other_runs_hold(
    limit_name: str, rabbit: RabbitAdmin, caplog: pytest.LogCaptureFixture
) -> None:
    # aiormq closes a channel whose RPC is cancelled, which would requeue every token held
    # on it: the runs holding them would go on with the limit exceeded.
    [tokens] = aqueue.Limit(limit_name, concurrency=2).tokens()
    queue = token_queue_name(tokens)
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL)
    try:
        held = await broker.take_token(tokens, wait=0)
        assert held is not None
        for _ in range(5):
            taking = asyncio.ensure_future(broker.take_token(tokens, wait=0))
            for _ in range(3):
                await asyncio.sleep(0)
            taking.cancel()
            with pytest.raises(asyncio.CancelledError):
                await taking
        await asyncio.sleep(0.3)  # the gets given up come back, and return their token
        assert await rabbit.count(queue) == 1  # the held token is still held
        await held.release()
        await _wait_for_count(rabbit, queue, 2)

        # A channel that closes while runs hold tokens: they are back, and a warning says so.
        held = await broker.take_token(tokens, wait=0)
        assert held is not None
        pool_channel = broker._pool(tokens).channel
        assert pool_channel is not None
        await pool_channel.close()
        await _wait_for_count(rabbit, queue, 2)
        assert f"limit {limit_name}: the channel holding 1 of its" in caplog.text
        await held.release()
    finally:
        await broker.close()


async def _wait_for_count(rabbit: RabbitAdmin, queue: str, count: int) -> None:
    deadline = time.monotonic() + 5
    while await rabbit.count(queue) != count:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


def test_limits_middleware_options_are_checked() -> None:
    for options, text in [
        ({"wait": -1}, "wait"),
        ({"max_waiting": -1}, "max_waiting"),
        ({"min_backoff": 0}, "min_backoff"),
        ({"min_backoff": 5, "max_backoff": 1}, "max_backoff"),
    ]:
        with pytest.raises(ValueError, match=text):
            Limits(**options)


async def test_prometheus_counts_tokens_in_use_waiting_and_postponed_messages(
    queue_name: str, limit_name: str
) -> None:
    from prometheus_client import CollectorRegistry

    from aqueue.middleware.prometheus import Prometheus

    registry = CollectorRegistry()
    broker = aqueue.InMemoryBroker(
        middleware=[Limits(wait=0.05, min_backoff=0.05), Prometheus(registry=registry)]
    )
    release = asyncio.Event()

    @broker.actor(queue_name=queue_name, limits=[aqueue.Limit(limit_name, concurrency=1)])
    async def exclusive(n: int) -> None:
        await release.wait()

    def sample(name: str) -> float:
        return registry.get_sample_value(f"aqueue_{name}", {"limit": limit_name}) or 0.0

    await exclusive.send_many([(1,), (2,)])
    async with aqueue.Worker(broker, queues=[queue_name]):
        await _wait_until(lambda: sample("limit_postponed_total") >= 1, 5, "a postponement")
        assert sample("limit_tokens_in_use") == 1
        release.set()
        await broker.join(queue_name, timeout=10)
    assert sample("limit_tokens_in_use") == 0
    assert sample("limit_waiting") == 0


async def test_the_limits_example_runs_two_at_a_time(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    rabbit: RabbitAdmin,
) -> None:
    from .test_docs import Examples

    examples = Examples(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "shared_limits", raising=False)
    try:
        example = examples.load("shared_limits")
        await example.main()
        assert capsys.readouterr().out.splitlines()[-1] == "7 calls, at most 2 at once"
    finally:
        sys.modules.pop("shared_limits", None)
        queue = examples.q("payments")
        await rabbit.delete(queue, queue + ".XQ")
        for pool in ("c2", "r10-1000ms"):
            await rabbit.delete(f"aqueue.limit.payments-api.{pool}")
            await rabbit.delete(f"aqueue.limit.payments-api.{pool}.filled")
        await rabbit.delete("aqueue.limit.payments-api.r10-1000ms.park")


def test_an_in_memory_broker_applies_its_limits_in_each_new_event_loop() -> None:
    # A module-level broker in users' tests meets a new event loop in every test.
    broker = aqueue.InMemoryBroker()
    [tokens] = aqueue.Limit("in-memory", concurrency=1).tokens()

    async def take_twice() -> tuple[bool, bool]:
        first = await broker.take_token(tokens, wait=0)
        second = await broker.take_token(tokens, wait=0.05)
        return first is not None, second is not None

    assert asyncio.run(take_twice()) == (True, False)
    assert asyncio.run(take_twice()) == (True, False)


async def test_a_lost_connection_returns_its_tokens_and_the_run_goes_on(
    rabbit: RabbitAdmin, queue_name: str, limit_name: str
) -> None:
    from ._proxy import FaultProxy

    proxy = await FaultProxy("127.0.0.1", 5672).start()
    broker = aqueue.RabbitmqBroker(proxy.url(), reconnect_interval=0.2)
    limit = aqueue.Limit(limit_name, concurrency=1)
    token_queue = token_queue_name(limit.tokens()[0])
    go_on = asyncio.Event()
    runs: list[int] = []

    @broker.actor(queue_name=queue_name, limits=[limit])
    async def exclusive(n: int) -> None:
        runs.append(n)
        if n == 1:
            await go_on.wait()

    try:
        await exclusive.send(1)
        async with aqueue.Worker(broker, queues=[queue_name]):
            await _wait_until(lambda: runs == [1], 10, "the first run")
            assert await rabbit.count(token_queue) == 0  # held by the run
            proxy.reset()  # the worker's connections drop
            await _wait_for_count(rabbit, token_queue, 1)  # RabbitMQ took the token back
            go_on.set()  # the run goes on, and ends; its copy is not run again
            await exclusive.send(2)
            await _wait_until(lambda: runs == [1, 2], 15, "a run after the reconnect")
            await broker.join(queue_name, timeout=15)
        await _wait_for_count(rabbit, token_queue, 1)  # one token still, not two
        assert runs == [1, 2]
    finally:
        await broker.close()
        await proxy.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_a_rabbitmq_restart_keeps_every_token_and_every_message() -> None:
    """RabbitMQ's app stops for 2 s while limited messages run: afterwards every message
    ran, the limit holds again, and each pool still has its N tokens (none lost, none
    added)."""
    queue, name = unique_name("q"), unique_name("limit")
    concurrency, rate = aqueue.Limit(name, concurrency=2), aqueue.Limit(name, rate="4/s")
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL, reconnect_interval=0.5, publish_timeout=60)
    spans: list[tuple[float, float]] = []
    done: set[tuple[str, int]] = set()

    @broker.actor(queue_name=queue, limits=[concurrency])
    async def bounded(n: int) -> None:
        started = time.monotonic()
        await asyncio.sleep(0.1)
        spans.append((started, time.monotonic()))
        done.add(("bounded", n))

    @broker.actor(queue_name=queue, limits=[rate])
    async def paced(n: int) -> None:
        done.add(("paced", n))

    [concurrency_tokens], [rate_tokens] = concurrency.tokens(), rate.tokens()
    pools = {token_queue_name(concurrency_tokens): 2, token_queue_name(rate_tokens): 4}
    try:
        await bounded.send_many([(i,) for i in range(40)])
        await paced.send_many([(i,) for i in range(20)])
        async with aqueue.Worker(broker, queues=[queue]):
            await _wait_until(lambda: len(done) >= 8, 30, "the first runs")
            await asyncio.to_thread(restart_rabbitmq, 2.0)
            restarted = time.monotonic()
            await _wait_until(lambda: len(done) == 60, 120, "every message after the restart")
            await broker.join(queue, timeout=60)
    finally:
        await broker.close()
    connection = await aio_pika.connect(RABBITMQ_URL)  # the fixtures' died with the restart
    admin = RabbitAdmin(connection)
    try:
        for token_queue, tokens in pools.items():
            # Parked rate tokens come back within a period.
            deadline = time.monotonic() + 5
            while (count := await admin.count(token_queue)) != tokens:
                assert time.monotonic() < deadline, f"{token_queue}: {count} of {tokens} tokens"
                await asyncio.sleep(0.05)
        after = [span for span in spans if span[0] > restarted]
        assert after, "no limited run after the restart"
        assert _max_overlap(after) <= 2
    finally:
        for token_queue in pools:
            await admin.delete(token_queue, token_queue + ".park", token_queue + ".filled")
        await admin.delete(queue, queue + ".XQ")
        await connection.close()
