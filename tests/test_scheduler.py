"""The scheduler fires each tick once across processes, held by RabbitMQ alone."""

from __future__ import annotations

import asyncio
import collections
import datetime
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import aqueue
from aqueue._scheduler import Scheduler, lease_queue_name, status_queue_name

from .conftest import RABBITMQ_URL, RabbitAdmin


async def test_fast_forward_fires_an_hourly_schedule_once_per_hour_passed() -> None:
    broker = aqueue.InMemoryBroker()
    ticks: list[str] = []

    @broker.actor(queue_name="reports")
    async def report(kind: str) -> None:
        assert kind == "hourly"
        ticks.append(aqueue.current_message().options["tick"])

    aqueue.schedule(report, cron="@hourly", args=("hourly",))
    async with aqueue.Worker(broker):
        await asyncio.sleep(0.2)  # the scheduler takes its lease
        await broker.fast_forward(3600)
        await broker.join("reports", timeout=5)
        assert len(ticks) == 1
        assert ticks[0].endswith(":00:00Z")
        await broker.fast_forward(3 * 3600)
        await broker.join("reports", timeout=5)
        assert len(ticks) == 4
        assert len(set(ticks)) == 4
        hours = [datetime.datetime.fromisoformat(t.replace("Z", "+00:00")) for t in ticks]
        assert all(b - a == datetime.timedelta(hours=1) for a, b in itertools.pairwise(hours))


async def test_two_schedulers_on_one_memory_broker_fire_each_tick_once() -> None:
    broker = aqueue.InMemoryBroker()
    ticks: list[str] = []

    @broker.actor(queue_name="beat")
    async def beat() -> None:
        ticks.append(aqueue.current_message().options["tick"])

    aqueue.schedule(beat, every=0.2)
    first, second = Scheduler(broker), Scheduler(broker)
    async with aqueue.Worker(broker, scheduler=False):
        await first.start()
        await second.start()
        await asyncio.sleep(1.5)
        assert [first.active["beat"], second.active["beat"]].count(True) == 1
        await first.stop()
        await second.stop()
        await broker.join("beat", timeout=5)
    assert 4 <= len(ticks) <= 9
    assert len(set(ticks)) == len(ticks)


def _tick_times(ticks: list[str]) -> list[float]:
    return sorted(
        datetime.datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() for t in ticks
    )


async def test_on_rabbitmq_one_scheduler_is_active_and_another_takes_over_without_a_double_tick(
    rabbit: RabbitAdmin, queue_name: str
) -> None:
    brokers = [aqueue.RabbitmqBroker(RABBITMQ_URL) for _ in range(3)]
    ticks: collections.Counter[str] = collections.Counter()
    name = f"beat-{queue_name}"
    for broker in brokers:

        @broker.actor(queue_name=queue_name, actor_name="beat")
        async def beat() -> None:
            ticks[aqueue.current_message().options["tick"]] += 1

        aqueue.schedule(beat, every=0.5, name=name)
    schedulers = [Scheduler(b) for b in brokers]
    try:
        async with aqueue.Worker(brokers[0], scheduler=False):
            for scheduler in schedulers:
                await scheduler.start()
            await asyncio.sleep(3)
            active = [s for s in schedulers if s.active[name]]
            assert len(active) == 1
            stopped_at = time.time()
            await active[0].stop()  # its lease goes back: the next takes over at once
            await asyncio.sleep(3)
            active = [s for s in schedulers if s.active[name]]
            assert len(active) == 1
            for scheduler in schedulers:
                await scheduler.stop()
            await brokers[0].join(queue_name, timeout=10)
        assert max(ticks.values()) == 1, "a tick fired twice"
        times = _tick_times(list(ticks))
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert gaps and max(gaps) == pytest.approx(0.5), "a tick was skipped"
        assert len(times) >= 9
        assert any(t > stopped_at for t in times)
    finally:
        for broker in brokers:
            await broker.close()
        await rabbit.delete(lease_queue_name(name), status_queue_name(name))


async def test_ticks_missed_while_no_scheduler_ran_fire_once_within_misfire_grace(
    rabbit: RabbitAdmin, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    ticks: collections.Counter[str] = collections.Counter()
    name = f"misfire-{queue_name}"
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL)

    @broker.actor(queue_name=queue_name, actor_name="beat")
    async def beat() -> None:
        ticks[aqueue.current_message().options["tick"]] += 1

    schedule = aqueue.schedule(beat, every=1, name=name, misfire_grace=2.5)
    try:
        async with aqueue.Worker(broker, scheduler=False):
            scheduler = Scheduler(broker)
            await scheduler.start()
            await asyncio.sleep(2.2)
            await scheduler.stop()
            await asyncio.sleep(5)  # no scheduler runs: 5 ticks are missed
            restarted = time.time()
            scheduler = Scheduler(broker)
            await scheduler.start()
            await asyncio.sleep(1.5)
            await scheduler.stop()
            await broker.join(queue_name, timeout=10)
        assert max(ticks.values()) == 1
        times = _tick_times(list(ticks))
        missed = [t for t in times if restarted - 5 < t < restarted]
        # Those within misfire_grace (2.5 s) of the takeover fired once; older ones skipped.
        assert 2 <= len(missed) <= 3, times
        assert "skipped" in caplog.text and schedule.name in caplog.text
    finally:
        await broker.close()
        await rabbit.delete(lease_queue_name(name), status_queue_name(name))


SCHEDULED_APP = """
import os

import aqueue

broker = aqueue.RabbitmqBroker()


@broker.actor(queue_name=os.environ["SCHEDULE_QUEUE"])
def beat() -> None:
    tick = aqueue.current_message().options["tick"]
    with open(os.environ["SCHEDULE_OUT"], "a") as out:
        out.write(f"{tick} {os.getpid()}\\n")


aqueue.schedule(beat, every=1, name=os.environ["SCHEDULE_NAME"])
"""


@pytest.mark.slow
async def test_two_worker_processes_fire_once_per_second_and_survive_a_sigkill(
    tmp_path: Path, rabbit: RabbitAdmin, queue_name: str
) -> None:
    (tmp_path / "scheduled_app.py").write_text(SCHEDULED_APP)
    out = tmp_path / "ticks.txt"
    name = f"beat-{queue_name}"
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "AQUEUE_BROKER_URL": RABBITMQ_URL,
        "SCHEDULE_QUEUE": queue_name,
        "SCHEDULE_OUT": str(out),
        "SCHEDULE_NAME": name,
    }
    logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
    processes = []
    for log in logs:
        with log.open("wb") as output:
            processes.append(
                subprocess.Popen(  # noqa: ASYNC220 (started once, not waited for here)
                    [sys.executable, "-m", "aqueue", "worker", "scheduled_app"],
                    env=env,
                    cwd=tmp_path,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                )
            )

    def ticks() -> list[str]:
        return out.read_text().split("\n")[:-1] if out.exists() else []

    def active() -> list[int]:
        text = [log.read_text() for log in logs]
        return [i for i, t in enumerate(text) if t.count("now its active scheduler") > 0]

    try:
        deadline = time.monotonic() + 30
        while len(ticks()) < 4 or not active():
            assert time.monotonic() < deadline, f"no ticks: {[log.read_text() for log in logs]}"
            await asyncio.sleep(0.2)
        assert len(active()) == 1, "two active schedulers"
        leader = active()[0]
        # Half way between two ticks: not while the leader fires one (see the docs for the
        # window in which a kill makes the next scheduler fire a tick again).
        await asyncio.sleep(1.5 - time.time() % 1)
        killed_at = time.time()
        processes[leader].send_signal(signal.SIGKILL)
        processes[leader].wait(10)
        other = logs[1 - leader]
        deadline = time.monotonic() + 15
        while other.read_text().count("now its active scheduler") == 0:
            assert time.monotonic() < deadline, other.read_text()
            await asyncio.sleep(0.2)
        took_over = time.time() - killed_at
        await asyncio.sleep(4)
        seen = [line.split()[0] for line in ticks()]
        times = _tick_times(seen)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        print(f"\n{len(seen)} ticks, takeover after {took_over:.1f} s, gaps {set(gaps)}")
        assert len(set(seen)) == len(seen), "a tick fired twice"
        assert set(gaps) == {1.0}, "a tick was missed"
        assert took_over < 5
        assert any(t > killed_at + 2 for t in times)
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        await rabbit.delete(lease_queue_name(name), status_queue_name(name))


async def test_prometheus_counts_ticks_and_shows_the_active_scheduler() -> None:
    from prometheus_client import CollectorRegistry

    from aqueue.middleware.prometheus import Prometheus

    registry = CollectorRegistry()
    broker = aqueue.InMemoryBroker()
    broker.add_middleware(Prometheus(registry=registry))

    @broker.actor(queue_name="reports")
    async def report() -> None: ...

    aqueue.schedule(report, cron="0 * * * *", name="hourly")
    async with aqueue.Worker(broker):
        await asyncio.sleep(0.2)
        assert registry.get_sample_value("aqueue_scheduler_active", {"schedule": "hourly"}) == 1
        await broker.fast_forward(2 * 3600)
        fired = {"schedule": "hourly", "outcome": "fired"}
        assert registry.get_sample_value("aqueue_schedule_ticks_total", fired) == 2
    assert registry.get_sample_value("aqueue_scheduler_active", {"schedule": "hourly"}) == 0


def test_schedules_lists_each_schedule_and_its_state(
    tmp_path: Path, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from aqueue.cli import main

    (tmp_path / "listed_app.py").write_text(
        "import aqueue\n\n"
        "broker = aqueue.RabbitmqBroker()\n\n"
        f"@broker.actor(queue_name={queue_name!r})\n"
        "def beat(kind: str) -> None: ...\n\n"
        f"aqueue.schedule(beat, cron='*/5 * * * *', args=('x',), name='{queue_name}-5m')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("AQUEUE_BROKER_URL", RABBITMQ_URL)
    result = CliRunner().invoke(main, ["schedules", "listed_app", "--json"])
    assert result.exit_code == 0, result.output
    rows = __import__("json").loads(result.output)
    assert rows[0]["name"] == f"{queue_name}-5m"
    assert rows[0]["expression"].startswith("cron */5 * * * *")
    assert rows[0]["state"] == "never run"
    minute = int(rows[0]["next_tick"][14:16])
    assert minute % 5 == 0
    result = CliRunner().invoke(main, ["schedules", "json"])  # a module without schedules
    assert result.exit_code == 2
    assert "declares no schedules" in result.output


async def test_schedules_shows_the_active_scheduler_and_the_last_tick(
    rabbit: RabbitAdmin, queue_name: str
) -> None:
    from aqueue.cli.schedule_commands import _schedule_rows

    broker = aqueue.RabbitmqBroker(RABBITMQ_URL)
    name = f"shown-{queue_name}"

    @broker.actor(queue_name=queue_name, actor_name="beat")
    async def beat() -> None: ...

    aqueue.schedule(beat, every=0.5, name=name)
    scheduler = Scheduler(broker)
    try:
        await scheduler.start()
        await asyncio.sleep(1.6)
        (row,) = await _schedule_rows(broker)
        assert row["state"] == "active"
        assert row["schedulers"] == 1
        assert row["active_scheduler"] == f"{socket.gethostname()} pid {os.getpid()}"
        last = datetime.datetime.fromisoformat(row["last_tick"].replace("Z", "+00:00"))
        assert 0 <= time.time() - last.timestamp() < 1.5
        await scheduler.stop()
        (row,) = await _schedule_rows(broker)
        assert row["state"] == "no scheduler"
        assert row["last_tick"] is not None
    finally:
        await scheduler.stop()
        await broker.close()
        await rabbit.delete(lease_queue_name(name), status_queue_name(name), queue_name)


async def test_a_paris_cron_on_the_in_memory_clock_crosses_the_spring_forward_day() -> None:
    broker = aqueue.InMemoryBroker()
    ticks: list[str] = []

    @broker.actor(queue_name="nightly")
    async def nightly() -> None:
        ticks.append(aqueue.current_message().options["tick"])

    aqueue.schedule(nightly, cron="30 2 * * *", timezone="Europe/Paris")
    # Move the clock to 2027-03-26 (some days before Europe's spring-forward, 2027-03-28).
    start = datetime.datetime(2027, 3, 26, 12, tzinfo=datetime.timezone.utc).timestamp()
    await broker.fast_forward(start - broker._now())
    async with aqueue.Worker(broker):
        await broker.fast_forward(4 * 86400)  # to 2027-03-30 12:00 UTC
        await broker.join("nightly", timeout=10)
    assert ticks == [
        "2027-03-27T01:30:00Z",  # 02:30 CET
        "2027-03-28T01:00:00Z",  # 02:30 does not exist that night: 03:00 CEST, as cron does
        "2027-03-29T00:30:00Z",  # 02:30 CEST
        "2027-03-30T00:30:00Z",
    ]
