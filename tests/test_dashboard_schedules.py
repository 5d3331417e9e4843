"""The dashboard's schedules page against the real RabbitMQ and a running scheduler."""

from __future__ import annotations

import asyncio
import datetime
import os
import socket
import time

import aqueue
from aqueue._scheduler import Scheduler, lease_queue_name, status_queue_name
from aqueue.dashboard._app import Dashboard

from .conftest import RABBITMQ_URL, RabbitAdmin
from .test_dashboard import client_of


def _age(tick: str) -> float:
    return time.time() - datetime.datetime.fromisoformat(tick.replace("Z", "+00:00")).timestamp()


async def test_schedules_page_shows_ticks_and_the_active_scheduler_then_its_absence(
    rabbit: RabbitAdmin, queue_name: str
) -> None:
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL)
    name = f"dash-{queue_name}"
    nightly = f"{name}-nightly"

    @broker.actor(queue_name=queue_name, actor_name="beat")
    async def beat() -> None: ...

    aqueue.schedule(beat, every=0.5, name=name)
    aqueue.schedule(beat, cron="30 2 * * *", timezone="Europe/Paris", name=nightly)
    dashboard = Dashboard(broker)
    scheduler = Scheduler(broker, names=[name])  # the nightly one is never run
    holder = f"{socket.gethostname()} pid {os.getpid()}"
    try:
        async with client_of(dashboard) as client:
            assert [r["state"] for r in (await client.get("/api/schedules")).json()] == [
                "never run",
                "never run",
            ]
            await scheduler.start()
            await asyncio.sleep(1.6)
            running, night = (await client.get("/api/schedules")).json()
            page = await client.get("/schedules")
            await scheduler.stop()
            stopped, _ = (await client.get("/api/schedules")).json()
            page_stopped = (await client.get("/schedules")).text
    finally:
        await scheduler.stop()
        await dashboard.close()
        await broker.close()
        await rabbit.delete(
            lease_queue_name(name),
            status_queue_name(name),
            lease_queue_name(nightly),
            status_queue_name(nightly),
        )

    assert running["name"] == name and running["expression"] == "every 0.5 s"
    assert (running["state"], running["schedulers"], running["active_scheduler"]) == (
        "active",
        1,
        holder,
    )
    assert running["last_tick"] is not None and 0 <= _age(running["last_tick"]) < 1.5
    assert 0 < _age(running["last_tick"]) - _age(running["next_tick"]) <= 1.0
    assert (running["actor"], running["queue"]) == ("beat", queue_name)
    assert night["name"] == nightly and night["expression"] == "cron 30 2 * * * (Europe/Paris)"
    assert (night["state"], night["last_tick"], night["active_scheduler"]) == (
        "never run",
        None,
        None,
    )

    assert page.status_code == 200
    text = page.text
    assert 'href="/schedules"' in text  # in the nav
    assert f"<td>{name}</td>" in text and f"<td>{nightly}</td>" in text
    assert running["last_tick"] in text and running["next_tick"] in text
    assert f"{holder}<br>" in text  # the active scheduler, host and pid
    assert f'href="/queues/{queue_name}"' in text

    assert (stopped["state"], stopped["schedulers"]) == ("no scheduler", 0)
    assert stopped["last_tick"] is not None
    assert f"none now; last {holder}" in page_stopped


async def test_schedules_page_says_when_the_module_declares_none(queue_name: str) -> None:
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL)

    @broker.actor(queue_name=queue_name)
    async def plain() -> None: ...

    dashboard = Dashboard(broker)
    try:
        async with client_of(dashboard) as client:
            page = await client.get("/schedules")
            api = await client.get("/api/schedules")
    finally:
        await dashboard.close()
        await broker.close()
    assert page.status_code == 200 and "declares no schedules" in page.text
    assert api.json() == []
