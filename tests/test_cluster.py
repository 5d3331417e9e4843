"""A 3-node RabbitMQ cluster (scripts/cluster.sh): a node goes away under load.

A producer (this process) and a worker process are both given the three URLs and connect to
the first node; that node is stopped (``stop_app``) while messages flow through quorum
queues. Sends and consumption must go on through the other nodes within seconds, and once the
node is back every confirmed message must have run.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import aio_pika
import pytest

import aqueue

from ._cluster import (
    CLUSTER_NODES,
    cluster_urls,
    ensure_cluster,
    running_nodes,
    start_node_app,
    stop_node_app,
)
from .conftest import unique_name

pytestmark = pytest.mark.slow

APP = """
import os
import time

import aqueue

broker = aqueue.RabbitmqBroker(
    os.environ["AQUEUE_TEST_URLS"], queue_type="quorum", shuffle_urls=False
)
OUT = os.environ["AQUEUE_TEST_OUT"]

@broker.actor(queue_name=os.environ["AQUEUE_TEST_QUEUE"])
async def record(n: int) -> None:
    with open(OUT, "a") as f:
        f.write(f"{n} {time.time()}\\n")
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[list[str]]:
    ensure_cluster()
    yield cluster_urls()
    # Leave every node running for the next test.
    for node in CLUSTER_NODES:
        if node not in running_nodes(CLUSTER_NODES[1]):
            start_node_app(node)


def _start_worker(root: Path, env: dict[str, str], log: IO[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "aqueue", "worker", "app:broker", "--log-level", "info"],
        cwd=root,
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _longest_gap(times: list[float], start: float, end: float) -> float:
    """The longest time without an event between ``start`` and ``end``."""
    inside = [start, *(t for t in times if start < t < end), end]
    return max(b - a for a, b in itertools.pairwise(inside))


def _processed(out: Path) -> list[tuple[int, float]]:
    if not out.exists():
        return []
    rows = []
    for line in out.read_text().splitlines():
        n, at = line.split()
        rows.append((int(n), float(at)))
    return rows


async def test_sends_and_consumption_go_on_when_the_connected_node_stops(
    cluster: list[str], tmp_path: Path
) -> None:
    queue = unique_name("cluster")
    out = tmp_path / "out.txt"
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))
    env = {
        "AQUEUE_TEST_URLS": ",".join(cluster),
        "AQUEUE_TEST_OUT": str(out),
        "AQUEUE_TEST_QUEUE": queue,
        "PYTHONPATH": str(tmp_path),
    }
    log = (tmp_path / "worker.log").open("w")
    worker = _start_worker(tmp_path, env, log)
    # The producer: the same three URLs, first node first.
    broker = aqueue.RabbitmqBroker(cluster, queue_type="quorum", shuffle_urls=False)

    @broker.actor(queue_name=queue, actor_name="record")
    async def record(n: int) -> None: ...

    confirmed: dict[int, float] = {}
    failed: list[int] = []
    stop_sending = asyncio.Event()
    first = CLUSTER_NODES[0]
    stopped_at = restarted_at = 0.0

    async def produce(lane: int) -> None:
        n = lane
        while not stop_sending.is_set():
            try:
                await record.send(n)
                confirmed[n] = time.time()
            except aqueue.BrokerConnectionError:
                failed.append(n)  # not confirmed: it may or may not have been queued
            n += 10
            await asyncio.sleep(0.01)

    try:
        await broker.connect()
        assert broker.connection is not None and broker.connection.url.port == 5681
        producers = [asyncio.ensure_future(produce(lane)) for lane in range(10)]
        deadline = time.monotonic() + 60
        while len(_processed(out)) < 200:
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            await asyncio.sleep(0.1)

        stopped_at = time.time()
        await asyncio.to_thread(stop_node_app, first)
        await asyncio.sleep(10)  # sends and consumption go on through the other two nodes
        sent_after = [t for t in confirmed.values() if t > stopped_at + 0.5]
        ran_after = [at for _, at in _processed(out) if at > stopped_at + 0.5]
        assert sent_after, "no send was confirmed after the node stopped"
        assert ran_after, "no message ran after the node stopped"
        assert broker.connection is not None and broker.connection.url.port != 5681

        await asyncio.to_thread(start_node_app, first)
        restarted_at = time.time()
        await asyncio.sleep(2)
        stop_sending.set()
        await asyncio.gather(*producers)

        deadline = time.monotonic() + 90
        while not set(confirmed) <= {n for n, _ in _processed(out)}:
            assert time.monotonic() < deadline, "confirmed messages never ran"
            await asyncio.sleep(0.2)
        processed = _processed(out)
        ids = [n for n, _ in processed]
        send_stall = _longest_gap(sorted(confirmed.values()), stopped_at, restarted_at)
        run_stall = _longest_gap(sorted(at for _, at in processed), stopped_at, restarted_at)
        print(
            f"\ncluster failover: sent {len(confirmed) + len(failed)}, confirmed "
            f"{len(confirmed)}, send errors {len(failed)}, processed (unique) {len(set(ids))}, "
            f"duplicated {len(ids) - len(set(ids))}, lost {len(set(confirmed) - set(ids))}; "
            f"longest stall after stop_app: sends {send_stall:.2f} s, processing "
            f"{run_stall:.2f} s; node back after {restarted_at - stopped_at:.1f} s"
        )
        assert send_stall < 10 and run_stall < 10
        assert set(confirmed) <= set(ids)
    finally:
        stop_sending.set()
        if worker.poll() is None:
            worker.terminate()
            try:
                await asyncio.to_thread(worker.wait, 30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        log.close()
        await broker.close()
        if first not in await asyncio.to_thread(running_nodes, CLUSTER_NODES[1]):
            await asyncio.to_thread(start_node_app, first)
        connection = await aio_pika.connect(cluster[1])
        async with connection, connection.channel() as channel:
            for name in (queue, queue + ".XQ"):
                await channel.queue_delete(name)
