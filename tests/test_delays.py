"""Delays held by RabbitMQ in binary TTL levels: precision, no head-of-line blocking, durability."""

from __future__ import annotations

import asyncio
import datetime
import time

import pytest

import aqueue
from aqueue.topology import DELAY_LEVELS, MAX_DELAY_MS, delay_route


def test_delay_route_writes_the_delay_in_binary_before_the_queue() -> None:
    exchange, key = delay_route("jobs.high", 10)
    assert exchange == "aqueue.delay.03"
    words = key.split(".")
    assert len(words) == DELAY_LEVELS + 2
    assert "".join(words[:DELAY_LEVELS]) == format(10, f"0{DELAY_LEVELS}b")
    assert words[DELAY_LEVELS:] == ["jobs", "high"]
    assert delay_route("q", MAX_DELAY_MS)[0] == f"aqueue.delay.{DELAY_LEVELS - 1:02d}"
    with pytest.raises(ValueError, match="delay"):
        delay_route("q", MAX_DELAY_MS + 1)
    # More than a year fits.
    assert MAX_DELAY_MS / 1000 > 366 * 86400


async def test_delayed_messages_arrive_on_time_and_never_early(
    broker: aqueue.Broker, queue_name: str
) -> None:
    arrivals: dict[float, float] = {}

    @broker.actor(queue_name=queue_name)
    async def due(delay: float, not_before: float) -> None:
        arrivals[delay] = time.time() - not_before

    delays = [0.05, 0.3, 1.0, 2.7]
    async with aqueue.Worker(broker, queues=[queue_name]):
        for delay in delays:
            not_before = time.time() + delay
            await due.send_with_options(args=(delay, not_before), delay=delay)
        await asyncio.sleep(max(delays) + 0.5)
        await broker.join(queue_name, timeout=10)
    assert sorted(arrivals) == delays
    for delay, lateness in arrivals.items():
        assert lateness >= 0, f"delay {delay} arrived {-lateness:.3f} s early"
        assert lateness <= max(0.2, 0.01 * delay), f"delay {delay} was {lateness:.3f} s late"


async def test_long_delay_sent_first_does_not_hold_back_a_short_one(
    broker: aqueue.Broker, queue_name: str
) -> None:
    arrived: list[str] = []

    @broker.actor(queue_name=queue_name)
    async def tick(label: str) -> None:
        arrived.append(label)

    sent_at = time.monotonic()
    await tick.send_with_options(args=("hour",), delay=3600)
    await tick.send_with_options(args=("second",), delay=datetime.timedelta(seconds=1))
    first = asyncio.Event()
    tick_original = tick.fn

    async def tick_and_signal(label: str) -> None:
        await tick_original(label)
        first.set()

    tick.fn = tick_and_signal
    async with aqueue.Worker(broker, queues=[queue_name]):
        await asyncio.wait_for(first.wait(), 10)
        elapsed = time.monotonic() - sent_at
    assert arrived == ["second"]
    assert 1.0 <= elapsed <= 1.5


async def test_delayed_message_waits_in_rabbitmq_while_no_worker_runs(
    broker: aqueue.Broker, queue_name: str
) -> None:
    done: list[int] = []

    @broker.actor(queue_name=queue_name)
    async def later(n: int) -> None:
        done.append(n)

    async with aqueue.Worker(broker, queues=[queue_name]):
        await later.send_with_options(args=(1,), delay=1.0)
    assert done == []
    await broker.close()  # nothing of it is held in this process
    await asyncio.sleep(1.5)
    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=10)
    assert done == [1]


async def test_eta_takes_an_aware_datetime(broker: aqueue.Broker, queue_name: str) -> None:
    done: list[float] = []

    @broker.actor(queue_name=queue_name)
    async def at(due: float) -> None:
        done.append(time.time() - due)

    eta = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=0.5)
    await at.send_with_options(args=(eta.timestamp(),), eta=eta)
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
    await at.send_with_options(args=(time.time(),), eta=past)
    async with aqueue.Worker(broker, queues=[queue_name]):
        await asyncio.sleep(0.8)
        await broker.join(queue_name, timeout=10)
    assert len(done) == 2
    assert all(0 <= lateness <= 0.3 for lateness in done)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"eta": datetime.datetime(2030, 1, 1)}, "timezone-aware"),
        ({"eta": "tomorrow"}, "eta must be a datetime"),
        (
            {"eta": datetime.datetime(9999, 1, 1, tzinfo=datetime.timezone.utc)},
            "longer than the longest",
        ),
        ({"delay": -1}, "delay must be >= 0"),
        ({"delay": float("nan")}, "delay must be"),
        ({"delay": "soon"}, "delay must be a number of seconds"),
        ({"delay": 1, "eta": datetime.datetime.now(datetime.timezone.utc)}, "either delay or eta"),
    ],
)
async def test_bad_delays_are_rejected_before_publishing(
    broker: aqueue.Broker,
    queue_name: str,
    options: dict[str, object],
    match: str,
) -> None:
    @broker.actor(queue_name=queue_name)
    async def task() -> None: ...

    await broker.declare_queue(queue_name)
    with pytest.raises(aqueue.ValidationError, match=match):
        await task.send_with_options(**options)  # type: ignore[arg-type]
    assert await broker.ready_count(queue_name) == 0


async def test_queue_names_with_dots_do_not_receive_each_others_delays(
    rabbitmq_broker: aqueue.RabbitmqBroker, make_queue_name: object
) -> None:
    broker = rabbitmq_broker
    short = make_queue_name()  # type: ignore[operator]
    dotted = f"zz.{short}"
    got: list[str] = []

    @broker.actor(queue_name=short, actor_name="short_actor")
    async def on_short() -> None:
        got.append("short")

    @broker.actor(queue_name=dotted, actor_name="dotted_actor")
    async def on_dotted() -> None:
        got.append("dotted")

    try:
        await broker.declare_queue(short)
        await on_dotted.send_with_options(delay=0.2)
        async with aqueue.Worker(broker, queues=[short, dotted]):
            await asyncio.sleep(0.6)
            await broker.join(dotted, timeout=10)
        assert got == ["dotted"]
    finally:
        channel = await broker._channel_for_topology()
        await channel.queue_delete(dotted)
        await channel.queue_delete(dotted + ".XQ")


async def test_delay_topology_deleted_behind_our_back_is_declared_again(
    rabbitmq_broker: aqueue.RabbitmqBroker, queue_name: str
) -> None:
    broker = rabbitmq_broker
    done: list[int] = []

    @broker.actor(queue_name=queue_name)
    async def later(n: int) -> None:
        done.append(n)

    await later.send_with_options(args=(1,), delay=0.01)
    channel = await broker._channel_for_topology()
    await channel.exchange_delete("aqueue.delay.03")
    await later.send_with_options(args=(2,), delay=0.01)  # 10 ms: published to level 3
    async with aqueue.Worker(broker, queues=[queue_name]):
        await asyncio.sleep(0.3)
        await broker.join(queue_name, timeout=10)
    assert sorted(done) == [1, 2]
