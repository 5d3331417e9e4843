"""aqueue against raw aio-pika, Dramatiq and taskiq-aio-pika, in one command.

Run from the repository root, with the peers installed (``pip install -e '.[bench]'``)
and RabbitMQ on ``--url`` (default ``AQUEUE_BROKER_URL`` or the local guest account)::

    python benchmarks/run.py --json benchmark.json

The method is in ``docs/performance.md``. In short:

* **Drain**: a queue is pre-filled with ``--messages`` persistent messages by the
  peer's own client, then the peer's worker process starts the way its users start it
  (``aqueue worker``, ``dramatiq``, ``taskiq worker``, or a plain aio-pika consumer
  script) with a no-op actor. The actor calls ``apps/probe.py``, which reads the wall
  clock and the process's CPU time at the first and at the last message, so start-up is
  excluded and every peer is measured alike. aqueue's ``Worker`` and raw aio-pika are
  also measured inside this process (clock from ``start()`` / ``basic.consume``).
* **Send**: ``--send-messages`` sends from ``--senders`` concurrent coroutines, each
  awaiting its confirm (aqueue ``actor.send``, raw ``exchange.publish`` on a confirming
  channel, taskiq ``kiq``); ``--serial-messages`` one-at-a-time sends (plus Dramatiq with
  ``confirm_delivery=True``); aqueue's ``send_many`` in batches of ``--batch``.
* **Latency**: an idle worker process; ``--latency-messages`` sequential sends, spaced
  by ``--latency-gap`` seconds; send-to-start = the actor's ``time.time()`` at start
  minus the sender's before ``send``; ``--repeat`` alternating rounds, percentiles of
  every round's sends together.
* **Memory and start-up**: RSS of an idle ``aqueue worker`` with 5 actors; start-up time
  and AMQP connections of one with 100 actors on 100 queues.
* **Blocking actors**: ``time.sleep(0.1)`` actors with ``--threads`` 8 and 32.
* **Limits**: aqueue's in-process drain with and without a concurrency limit of twice the
  worker's concurrency (it never binds), alternating: the cost of the token per message.
* **Threads**: a pre-filled queue drained by a blocking no-op (``def``) actor with
  ``--drain-threads`` threads: ``aqueue worker``, Dramatiq's CLI, and a raw aio-pika
  consumer that hands each message to a ``ThreadPoolExecutor`` (``run_in_executor``).

Every comparison alternates its sides within each of ``--repeat`` rounds and reports
medians; ratios are ratios of medians from this one run. Every run uses fresh queue
names (``bench-<peer>-<uuid8>``) and deletes them, with the peers' extra queues and
exchanges, afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import psutil
from bench_core import WORKER_MODULE  # benchmarks/ is on sys.path when run

import aqueue

HERE = Path(__file__).resolve().parent
APPS = HERE / "apps"
DEFAULT_URL = os.environ.get("AQUEUE_BROKER_URL") or "amqp://guest:guest@127.0.0.1:5672/"
AMQP_PORT = 5672
ACTOR = "bench_noop"

log = logging.getLogger("bench")

# The issue's goals.
GOALS = {
    "drain_vs_raw": 1.3,
    "drain_vs_dramatiq": 1.7,
    "drain_vs_taskiq": 2.0,
    "send_concurrent_vs_raw": 1.0,
    "send_serial_vs_dramatiq": 1.0,  # "ahead of": > 1
    "send_many_vs_raw": 1.2,
    "latency_p50_ms": 1.2,
    "latency_p99_ms": 3.0,
    "idle_rss_mb": 35.0,
    "start_100_s": 2.0,
    "connections_100": 2,  # a worker: one connection consumes, one publishes
    "blocking_efficiency": 0.97,
    # Issue 18.
    "threads_vs_dramatiq": 1.5,
    "threads_cpu_vs_dramatiq": 0.7,
    "latency_p50_vs_raw": 1.0,
    "latency_p99_vs_raw": 1.5,
}


@dataclass
class Settings:
    url: str
    messages: int
    send_messages: int
    serial_messages: int
    batch: int
    repeat: int
    senders: int
    prefetch: int
    latency_messages: int
    latency_gap: float
    threads: list[int]
    drain_threads: int
    #: Other checkouts of aqueue whose aqueue-sync also runs in the threads section.
    baselines: list[str]
    only: list[str]
    peers: list[str]
    json_path: str | None
    #: The benchmark process's own event loop: its sends, latency senders, in-process drains.
    process_loop: str = "asyncio"


@dataclass
class Sample:
    """One timed run: ``count`` messages in ``seconds`` wall, ``cpu`` CPU seconds."""

    benchmark: str
    side: str
    round: int
    count: int
    seconds: float
    cpu: float
    connections: int | None = None
    rss_mb: float | None = None
    loop: str | None = None
    error: str | None = None

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 and not self.error else 0.0

    @property
    def cpu_us(self) -> float:
        return self.cpu / self.count * 1e6 if self.count and not self.error else 0.0


@dataclass
class Results:
    samples: list[Sample] = field(default_factory=list)
    latency: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    blocking: dict[str, Any] = field(default_factory=dict)


# -- helpers ----------------------------------------------------------------------------------


def new_queue(side: str) -> str:
    return f"bench-{side}-{uuid.uuid4().hex[:8]}"


def split_evenly(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if k < extra else 0) for k in range(parts)]


async def run_senders(count: int, senders: int, send: Callable[[int], Awaitable[object]]) -> None:
    """Send ``count`` messages from ``senders`` coroutines, each awaiting every send."""

    async def sender(start: int, n: int) -> None:
        for i in range(start, start + n):
            await send(i)

    jobs, start = [], 0
    for n in split_evenly(count, min(senders, count)):
        jobs.append(sender(start, n))
        start += n
    await asyncio.gather(*jobs)


async def timed(coro: Awaitable[object]) -> tuple[float, float]:
    """(wall, CPU of this process) seconds that awaiting ``coro`` took."""
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    await coro
    return time.perf_counter() - wall, time.process_time() - cpu


async def queue_state(url: str, queue: str) -> tuple[int, int]:
    """(ready messages, consumers) of ``queue``, by a passive declare."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        result = declared.declaration_result
        return int(result.message_count or 0), int(result.consumer_count or 0)
    finally:
        await connection.close()


async def wait_for_ready(url: str, queue: str, expected: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        ready, _ = await queue_state(url, queue)
        if ready == expected:
            return
        if time.monotonic() >= deadline:
            raise RuntimeError(f"queue {queue} holds {ready} messages, expected {expected}")
        await asyncio.sleep(0.05)


async def wait_for_consumer(url: str, queue: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(aiormq.exceptions.ChannelNotFoundEntity):
            if (await queue_state(url, queue))[1] > 0:
                return
        if process.poll() is not None:
            raise RuntimeError(f"the worker exited with {process.returncode} before consuming")
        if time.monotonic() >= deadline:
            raise RuntimeError(f"no consumer on {queue} within 60 s")
        await asyncio.sleep(0.05)


async def delete_topology(url: str, queues: list[str], exchanges: list[str] | None = None) -> None:
    """Delete ``queues`` and ``exchanges`` (missing ones are fine); never raises."""
    exchanges = exchanges or []
    try:
        connection = await aio_pika.connect(url)
    except Exception as exc:
        log.warning("cannot connect to clean up %s: %s", queues, exc)
        return
    try:
        for name, is_queue in [(q, True) for q in queues] + [(e, False) for e in exchanges]:
            channel = await connection.channel()
            try:
                if is_queue:
                    await channel.queue_delete(name)
                else:
                    await channel.exchange_delete(name)
            except aiormq.exceptions.AMQPError as exc:
                log.warning("cannot delete %s: %s", name, exc)
            finally:
                if not channel.is_closed:
                    await channel.close()
    finally:
        await connection.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# -- worker processes -------------------------------------------------------------------------


def process_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def amqp_connections(pid: int, port: int = AMQP_PORT) -> int:
    """TCP connections to the AMQP port held by ``pid`` and its children."""
    count = 0
    for proc in process_tree(pid):
        with contextlib.suppress(psutil.Error):
            count += sum(
                1
                for c in proc.net_connections(kind="tcp")
                if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
            )
    return count


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            for proc in reversed(process_tree(process.pid)):
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            process.wait()


@contextlib.contextmanager
def worker_process(
    argv: list[str], env: dict[str, str], log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    full_env = {
        **os.environ,
        **env,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [env.get("PYTHONPATH"), str(APPS), os.environ.get("PYTHONPATH")])
        ),
        "PYTHONUNBUFFERED": "1",
    }
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            argv, cwd=APPS, env=full_env, stdout=log_file, stderr=subprocess.STDOUT
        )
        try:
            yield process
        finally:
            stop_process(process)


def wait_for_report(
    path: Path, process: subprocess.Popen[bytes], log_path: Path, timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise RuntimeError(
                f"worker exited with {process.returncode}:\n{log_path.read_text()[-3000:]}"
            )
        if time.monotonic() >= deadline:
            raise RuntimeError(f"no report within {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.01)
    report: dict[str, Any] = json.loads(path.read_text())
    return report


# -- the peers --------------------------------------------------------------------------------


@dataclass
class Peer:
    """How to fill a queue for a peer, start its worker, send with it, and clean up."""

    name: str
    kind: str  # "async" or "sync" actor
    argv: Callable[[Settings, int], list[str]]  # (settings, threads) -> command
    fill: Callable[[Settings, str, int], Awaitable[None]]
    extra_queues: Callable[[str], list[str]]
    exchanges: Callable[[str], list[str]] = lambda q: []
    loop: str = "auto"  # aqueue's --loop; BENCH_LOOP for the raw consumer
    ack: str = "single"  # BENCH_ACK for exp-*
    in_drain: bool = True  # a side of the drain section (else of the threads section only)
    #: BENCH_PREFETCH of the raw consumers, by threads (default ``--prefetch``).
    prefetch: Callable[[int], int] | None = None


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def aqueue_argv(settings: Settings, threads: int, loop: str = "auto") -> list[str]:
    return python(
        "-m", "aqueue", "worker", "aq_app", "--concurrency", str(settings.prefetch),
        "--threads", str(threads), "--loop", loop,
    )  # fmt: skip


def aqueue_asyncio_argv(settings: Settings, threads: int) -> list[str]:
    return aqueue_argv(settings, threads, "asyncio")


def dramatiq_argv(settings: Settings, threads: int) -> list[str]:
    return python("-m", "dramatiq", "dq_app", "--processes", "1", "--threads", str(threads))


def taskiq_argv(settings: Settings, threads: int) -> list[str]:
    return python(
        "-m", "taskiq", "worker", "tq_app:broker", "--workers", "1",
        "--max-async-tasks", str(settings.prefetch), "--max-threadpool-threads", str(threads),
    )  # fmt: skip


def raw_argv(settings: Settings, threads: int) -> list[str]:
    return python("raw_consumer.py")


def raw_aiormq_argv(settings: Settings, threads: int) -> list[str]:
    return python("raw_aiormq.py")


def aqueue_broker(url: str, queue: str) -> tuple[aqueue.RabbitmqBroker, aqueue.Actor[Any, Any]]:
    broker = aqueue.RabbitmqBroker(url)

    @broker.actor(queue_name=queue, actor_name=ACTOR)
    async def bench_noop(i: int) -> None:
        return None

    return broker, bench_noop


async def fill_aqueue(settings: Settings, queue: str, count: int) -> None:
    broker, actor = aqueue_broker(settings.url, queue)
    try:
        await broker.declare_queue(queue)
        await run_senders(count, settings.senders, actor.send)
    finally:
        await broker.close()
    await wait_for_ready(settings.url, queue, count)


def raw_body(i: int, size: int) -> bytes:
    head = f"{i} ".encode()
    return head + b"x" * max(0, size - len(head))


def aqueue_body_size(queue: str) -> int:
    return len(aqueue.Message(queue_name=queue, actor_name=ACTOR, args=(12345,)).encode())


async def raw_publisher(
    url: str, queue: str
) -> tuple[aio_pika.abc.AbstractRobustConnection, Callable[[int], Awaitable[object]]]:
    connection = await aio_pika.connect_robust(url)
    channel = await connection.channel(publisher_confirms=True)
    await channel.declare_queue(queue, durable=True)
    exchange = channel.default_exchange
    size = aqueue_body_size(queue)

    async def send(i: int) -> None:
        message = aio_pika.Message(
            raw_body(i, size), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
        )
        await exchange.publish(message, routing_key=queue)

    return connection, send


async def fill_raw(settings: Settings, queue: str, count: int) -> None:
    connection, send = await raw_publisher(settings.url, queue)
    try:
        await run_senders(count, settings.senders, send)
    finally:
        await connection.close()
    await wait_for_ready(settings.url, queue, count)


def dramatiq_broker(url: str, queue: str, *, confirm: bool) -> tuple[Any, Any]:
    import dramatiq
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=url, confirm_delivery=confirm)

    @dramatiq.actor(broker=broker, queue_name=queue, actor_name=ACTOR, max_retries=0)
    def bench_noop(i: int) -> None:
        return None

    return broker, bench_noop


async def fill_dramatiq(settings: Settings, queue: str, count: int) -> None:
    broker, actor = dramatiq_broker(settings.url, queue, confirm=False)

    def fill() -> None:
        try:
            for i in range(count):
                actor.send(i)
        finally:
            broker.close()

    await asyncio.to_thread(fill)
    await wait_for_ready(settings.url, queue, count)


def taskiq_broker(url: str, queue: str, prefetch: int) -> tuple[Any, Any]:
    from taskiq_aio_pika import AioPikaBroker, Exchange, Queue, QueueType

    broker = AioPikaBroker(
        url,
        qos=prefetch,
        exchange=Exchange(name=f"{queue}.ex"),
        task_queues=[Queue(name=queue, type=QueueType.CLASSIC)],
        dead_letter_queue=Queue(name=f"{queue}.dlq", type=QueueType.CLASSIC),
    )

    @broker.task(task_name=ACTOR)
    async def bench_noop(i: int) -> None:
        return None

    return broker, bench_noop


async def fill_taskiq(settings: Settings, queue: str, count: int) -> None:
    broker, task = taskiq_broker(settings.url, queue, settings.prefetch)
    await broker.startup()
    try:
        await run_senders(count, settings.senders, task.kiq)
    finally:
        await broker.shutdown()
    await wait_for_ready(settings.url, queue, count)


PEERS: dict[str, Peer] = {
    "aqueue": Peer("aqueue", "async", aqueue_argv, fill_aqueue, lambda q: [f"{q}.XQ"]),
    "aqueue-sync": Peer("aqueue-sync", "sync", aqueue_argv, fill_aqueue, lambda q: [f"{q}.XQ"]),
    "aqueue-asyncio": Peer(
        "aqueue-asyncio", "async", aqueue_asyncio_argv, fill_aqueue, lambda q: [f"{q}.XQ"]
    ),
    "raw": Peer("raw", "async", raw_argv, fill_raw, lambda q: [], loop="asyncio"),
    "raw-uvloop": Peer("raw-uvloop", "async", raw_argv, fill_raw, lambda q: [], loop="uvloop"),
    # aio-pika handing each message to a ThreadPoolExecutor, prefetch 2 x threads (Dramatiq's).
    "raw-thread": Peer(
        "raw-thread",
        "sync",
        raw_argv,
        fill_raw,
        lambda q: [],
        loop="asyncio",
        in_drain=False,
        prefetch=lambda threads: 2 * threads,
    ),
    # Experiments, not peers: aiormq without aio-pika (aqueue's floor), and coalesced acks.
    "exp-aiormq": Peer("exp-aiormq", "async", raw_aiormq_argv, fill_raw, lambda q: []),
    "exp-multiack": Peer(
        "exp-multiack", "async", raw_aiormq_argv, fill_raw, lambda q: [], ack="multiple"
    ),
    "dramatiq": Peer(
        "dramatiq", "sync", dramatiq_argv, fill_dramatiq, lambda q: [f"{q}.DQ", f"{q}.XQ"]
    ),
    "dramatiq-async": Peer(
        "dramatiq-async", "async", dramatiq_argv, fill_dramatiq, lambda q: [f"{q}.DQ", f"{q}.XQ"]
    ),
    "taskiq": Peer(
        "taskiq", "async", taskiq_argv, fill_taskiq, lambda q: [f"{q}.dlq"], lambda q: [f"{q}.ex"]
    ),
    "taskiq-sync": Peer(
        "taskiq-sync",
        "sync",
        taskiq_argv,
        fill_taskiq,
        lambda q: [f"{q}.dlq"],
        lambda q: [f"{q}.ex"],
    ),
}


def peer_env(
    settings: Settings,
    peer: Peer,
    queue: str,
    count: int,
    out: Path,
    threads: int = 8,
    **extra: str,
) -> dict[str, str]:
    prefetch = settings.prefetch if peer.prefetch is None else peer.prefetch(threads)
    return {
        "BENCH_URL": settings.url,
        "BENCH_QUEUE": queue,
        "BENCH_N": str(count),
        "BENCH_OUT": str(out),
        "BENCH_KIND": peer.kind,
        "BENCH_THREADS": str(threads),
        "BENCH_PREFETCH": str(prefetch),
        "BENCH_LOOP": peer.loop,
        "BENCH_ACK": peer.ack,
        **extra,
    }


# -- drain ------------------------------------------------------------------------------------


async def drain_process(
    settings: Settings,
    peer: Peer,
    round_: int,
    tmp: Path,
    *,
    count: int | None = None,
    threads: int = 8,
    sleep: float = 0.0,
    benchmark: str = "drain",
    side: str | None = None,
    pythonpath: str | None = None,
) -> Sample:
    """Pre-fill a queue, start the peer's worker process, read its probe report.

    ``pythonpath`` goes first on the worker's path: another checkout of aqueue, for a
    before/after comparison (reported as ``side``).
    """
    count = settings.messages if count is None else count
    queue = new_queue(peer.name.split("-")[0])
    out = tmp / f"{queue}.json"
    log_path = tmp / f"{queue}.log"
    try:
        await peer.fill(settings, queue, count)
        env = peer_env(settings, peer, queue, count, out, threads, BENCH_SLEEP=str(sleep))
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        with worker_process(peer.argv(settings, threads), env, log_path) as process:
            timeout = max(60.0, count / 200)
            report = await asyncio.to_thread(wait_for_report, out, process, log_path, timeout)
            connections = amqp_connections(process.pid)
        # First to last call: count - 1 intervals (with sleep: first start to last end).
        done = count if sleep else count - 1
        return Sample(
            benchmark,
            side or peer.name,
            round_,
            done,
            report["last_wall"] - report["first_wall"],
            report["last_cpu"] - report["first_cpu"],
            connections=connections,
            rss_mb=report["rss_bytes"] / 2**20,
            loop=report.get("loop"),
        )
    except Exception as exc:
        log.error("%s %s round %d failed: %s", benchmark, side or peer.name, round_, exc)
        return Sample(benchmark, side or peer.name, round_, count, 0.0, 0.0, error=str(exc)[:500])
    finally:
        await delete_topology(
            settings.url, [queue, *peer.extra_queues(queue)], peer.exchanges(queue)
        )


async def drain_aqueue_inprocess(
    settings: Settings,
    round_: int,
    *,
    limit: aqueue.Limit | None = None,
    benchmark: str = "drain-inproc",
    side: str = "aqueue",
) -> Sample:
    """aqueue's Worker in this process: clock from ``worker.start()`` to the last message;
    with ``limit``, the actor runs under it (its token queue is filled before the clock)."""
    queue = new_queue("aqueue")
    limited = {} if limit is None else {"limits": [limit]}
    count = settings.messages
    broker = aqueue.RabbitmqBroker(settings.url)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[float, float]] = loop.create_future()
    calls = 0

    @broker.actor(queue_name=queue, actor_name=ACTOR, concurrency=settings.prefetch, **limited)
    async def bench_noop(i: int) -> None:
        nonlocal calls
        calls += 1
        if calls == count:
            done.set_result((time.perf_counter(), time.process_time()))

    try:
        await fill_aqueue(settings, queue, count)
        if limit is not None:
            await broker.prepare_tokens(limit.tokens())
        worker = aqueue.Worker(broker, queues=[queue], concurrency=settings.prefetch)
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        await worker.start()
        try:
            end_wall, end_cpu = await asyncio.wait_for(done, max(60.0, count / 200))
        finally:
            await worker.stop()
        return Sample(benchmark, side, round_, count, end_wall - wall, end_cpu - cpu)
    except Exception as exc:
        log.error("%s %s round %d failed: %s", benchmark, side, round_, exc)
        return Sample(benchmark, side, round_, count, 0, 0, error=str(exc)[:500])
    finally:
        await broker.close()
        tokens = (
            []
            if limit is None
            else [f"aqueue.limit.{t.key}{end}" for t in limit.tokens() for end in ("", ".filled")]
        )
        await delete_topology(settings.url, [queue, f"{queue}.XQ", *tokens])


async def drain_raw_inprocess(settings: Settings, round_: int) -> Sample:
    """Raw aio-pika in this process: clock from opening the channel to the last ack."""
    queue = new_queue("raw")
    count = settings.messages
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[float, float]] = loop.create_future()
    calls = 0

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal calls
        await message.ack()
        calls += 1
        if calls == count:
            done.set_result((time.perf_counter(), time.process_time()))

    try:
        await fill_raw(settings, queue, count)
        connection = await aio_pika.connect_robust(settings.url)
        try:
            gc.collect()
            wall, cpu = time.perf_counter(), time.process_time()
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=settings.prefetch)
            declared = await channel.declare_queue(queue, durable=True)
            tag = await declared.consume(on_message)
            end_wall, end_cpu = await asyncio.wait_for(done, max(60.0, count / 200))
            await declared.cancel(tag)
        finally:
            await connection.close()
        return Sample("drain-inproc", "raw", round_, count, end_wall - wall, end_cpu - cpu)
    except Exception as exc:
        log.error("drain-inproc raw round %d failed: %s", round_, exc)
        return Sample("drain-inproc", "raw", round_, count, 0, 0, error=str(exc)[:500])
    finally:
        await delete_topology(settings.url, [queue])


# -- send -------------------------------------------------------------------------------------


async def send_side(settings: Settings, benchmark: str, side: str, round_: int) -> Sample:
    """One send run: ``send-concurrent``, ``send-serial`` or ``send-many``."""
    queue = new_queue(side)
    concurrent = benchmark != "send-serial"
    count = settings.send_messages if concurrent else settings.serial_messages
    senders = settings.senders if concurrent else 1
    cleanup: list[str] = [queue]
    exchanges: list[str] = []
    try:
        if side == "aqueue":
            broker, actor = aqueue_broker(settings.url, queue)
            cleanup.append(f"{queue}.XQ")
            try:
                await broker.declare_queue(queue)
                if benchmark == "send-many":
                    if not hasattr(actor, "send_many"):
                        raise NotImplementedError("n/a: this aqueue has no send_many")

                    async def many() -> None:
                        for start in range(0, count, settings.batch):
                            calls = [(i,) for i in range(start, min(count, start + settings.batch))]
                            await actor.send_many(calls)

                    wall, cpu = await timed(many())
                else:
                    wall, cpu = await timed(run_senders(count, senders, actor.send))
            finally:
                await broker.close()
        elif side == "raw":
            connection, send = await raw_publisher(settings.url, queue)
            try:
                wall, cpu = await timed(run_senders(count, senders, send))
            finally:
                await connection.close()
        elif side == "taskiq":
            tq_broker, task = taskiq_broker(settings.url, queue, settings.prefetch)
            cleanup.append(f"{queue}.dlq")
            exchanges.append(f"{queue}.ex")
            await tq_broker.startup()
            try:
                wall, cpu = await timed(run_senders(count, senders, task.kiq))
            finally:
                await tq_broker.shutdown()
        elif side == "dramatiq":
            dq_broker, dq_actor = dramatiq_broker(settings.url, queue, confirm=True)
            cleanup += [f"{queue}.DQ", f"{queue}.XQ"]

            def serial() -> tuple[float, float]:
                try:
                    dq_actor.send(-1)  # declares the queues, as a first send does
                    wall, cpu = time.perf_counter(), time.process_time()
                    for i in range(count - 1):
                        dq_actor.send(i)
                    return time.perf_counter() - wall, time.process_time() - cpu
                finally:
                    dq_broker.close()

            gc.collect()
            wall, cpu = await asyncio.to_thread(serial)
            count -= 1
        else:
            raise ValueError(side)
        await wait_for_ready(settings.url, queue, count + (side == "dramatiq"))
        return Sample(benchmark, side, round_, count, wall, cpu)
    except Exception as exc:
        if not isinstance(exc, NotImplementedError):
            log.error("%s %s round %d failed: %s", benchmark, side, round_, exc)
        return Sample(benchmark, side, round_, count, 0, 0, error=str(exc)[:500])
    finally:
        await delete_topology(settings.url, cleanup, exchanges)


# -- latency ----------------------------------------------------------------------------------


async def latency(settings: Settings, side: str, tmp: Path) -> dict[str, Any]:
    """Send-to-start latency of sequential sends to an idle worker process."""
    peer = PEERS[side]
    queue = new_queue(side)
    count = settings.latency_messages
    out = tmp / f"{queue}.json"
    log_path = tmp / f"{queue}.log"
    sent: list[float] = [0.0] * count
    try:
        if side == "aqueue":
            broker, actor = aqueue_broker(settings.url, queue)
            await broker.declare_queue(queue)
            send: Callable[[int], Awaitable[object]] = actor.send
            close: Callable[[], Awaitable[None]] = broker.close
        else:
            connection, send = await raw_publisher(settings.url, queue)
            close = connection.close
        try:
            env = peer_env(settings, peer, queue, count, out, BENCH_LATENCY="1")
            with worker_process(peer.argv(settings, 8), env, log_path) as process:
                await wait_for_consumer(settings.url, queue, process)
                await send(-1)  # warms both ends up; counted by the probe, left out here
                await asyncio.sleep(0.5)
                for i in range(count - 1):
                    await asyncio.sleep(settings.latency_gap)
                    sent[i] = time.time()
                    await send(i)
                report = await asyncio.to_thread(wait_for_report, out, process, log_path, 60)
        finally:
            await close()
        arrivals = {i: t for i, t in report["arrivals"] if i >= 0}
        ms = [(arrivals[i] - sent[i]) * 1000 for i in range(count - 1) if i in arrivals]
        return {**latency_stats(ms), "samples_ms": ms}
    except Exception as exc:
        log.error("latency %s failed: %s", side, exc)
        return {"error": str(exc)[:500]}
    finally:
        await delete_topology(settings.url, [queue, *peer.extra_queues(queue)])


def latency_stats(ms: list[float]) -> dict[str, Any]:
    return {
        "messages": len(ms),
        "p50_ms": percentile(ms, 0.50),
        "p90_ms": percentile(ms, 0.90),
        "p99_ms": percentile(ms, 0.99),
        "max_ms": max(ms),
    }


def pooled_latency(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The percentiles of every round's sends together, and each round's p50 and p99."""
    ok = [r for r in rounds if "samples_ms" in r]
    if not ok:
        return rounds[-1] if rounds else {}
    pooled = [m for r in ok for m in r["samples_ms"]]
    return {
        **latency_stats(pooled),
        "rounds": len(ok),
        "round_p50_ms": [round(r["p50_ms"], 3) for r in ok],
        "round_p99_ms": [round(r["p99_ms"], 3) for r in ok],
    }


# -- memory and start-up ----------------------------------------------------------------------

# The worker module of bench_core.py's connection count: five actors on five queues.
FIVE_ACTORS = WORKER_MODULE

MANY_ACTORS_HEAD = '''
"""{n} actors on {n} queues (generated by benchmarks/run.py)."""

import aqueue

broker = aqueue.RabbitmqBroker()
'''

MANY_ACTORS_EACH = """

@broker.actor(queue_name="{prefix}-{k}")
async def actor_{k}(x: int) -> None:
    return None
"""


def wait_for_log(process: subprocess.Popen[bytes], log_path: Path, text: str) -> float:
    deadline = time.monotonic() + 60
    while text not in log_path.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() >= deadline:
            raise RuntimeError(f"no {text!r} from the worker:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.005)
    return time.monotonic()


def rss_mb(pid: int) -> float:
    return sum(p.memory_info().rss for p in process_tree(pid)) / 2**20


async def memory(settings: Settings, tmp: Path) -> dict[str, Any]:
    """RSS of an idle worker with 5 actors; start-up and connections with 100 actors."""
    result: dict[str, Any] = {}
    env = {"AQUEUE_BROKER_URL": settings.url}
    for actors in (5, 100):
        tag = uuid.uuid4().hex[:8]
        prefix = f"bench-mem-{tag}"
        module = f"bench_mem_{tag}"
        if actors == 5:
            source = textwrap.dedent(FIVE_ACTORS).lstrip().format(prefix=prefix)
        else:
            source = MANY_ACTORS_HEAD.lstrip().format(n=actors) + "".join(
                MANY_ACTORS_EACH.format(prefix=prefix, k=k) for k in range(actors)
            )
        (tmp / f"{module}.py").write_text(source)
        queues = [f"{prefix}-{k}" for k in range(actors)]
        log_path = tmp / f"{module}.log"
        argv = python("-m", "aqueue", "worker", module)
        try:
            entry: dict[str, Any] = {}
            if actors > 5:
                # A first start declares the queues; RabbitMQ creating hundreds of durable
                # queues is slow on its own, so the start-up that counts is a restart.
                with worker_process(argv, {**env, "PYTHONPATH": str(tmp)}, log_path) as process:
                    started = time.monotonic()
                    ready = await asyncio.to_thread(
                        wait_for_log, process, log_path, "worker started"
                    )
                    entry["first_start_s"] = ready - started
            with worker_process(argv, {**env, "PYTHONPATH": str(tmp)}, log_path) as process:
                started = time.monotonic()
                ready = await asyncio.to_thread(wait_for_log, process, log_path, "worker started")
                entry["start_s"] = ready - started
                await asyncio.sleep(2.0)
                entry["idle_rss_mb"] = rss_mb(process.pid)
                entry["connections"] = amqp_connections(process.pid)
                if actors == 5:
                    broker = aqueue.RabbitmqBroker(settings.url)
                    try:
                        for queue, name in zip(
                            queues,
                            ["async_0", "async_1", "async_2", "blocking_3", "blocking_4"],
                            strict=True,
                        ):
                            for i in range(20):
                                await broker.enqueue(
                                    aqueue.Message(queue_name=queue, actor_name=name, args=(i,))
                                )
                    finally:
                        await broker.close()
                    for queue in queues:
                        await wait_for_ready(settings.url, queue, 0)
                    await asyncio.sleep(1.0)
                    entry["rss_after_100_messages_mb"] = rss_mb(process.pid)
                    entry["connections_after_messages"] = amqp_connections(process.pid)
            result[f"actors_{actors}"] = entry
        except Exception as exc:
            log.error("memory with %d actors failed: %s", actors, exc)
            result[f"actors_{actors}"] = {"error": str(exc)[:500]}
        finally:
            await delete_topology(settings.url, queues + [f"{q}.XQ" for q in queues])
    return result


# -- blocking actors --------------------------------------------------------------------------


async def blocking(settings: Settings, tmp: Path) -> dict[str, Any]:
    """Throughput of ``time.sleep(0.1)`` actors against the ideal ``threads * 10`` per second."""
    result: dict[str, Any] = {}
    for threads in settings.threads:
        ideal = threads * 10.0
        count = threads * 30  # 3 s at the ideal rate
        runs: list[Sample] = []
        for round_ in range(1, min(settings.repeat, 3) + 1):
            runs.append(
                await drain_process(
                    settings,
                    PEERS["aqueue-sync"],
                    round_,
                    tmp,
                    count=count,
                    threads=threads,
                    sleep=0.1,
                    benchmark=f"blocking-{threads}",
                )
            )
        rates = [r.rate for r in runs if not r.error]
        median = statistics.median(rates) if rates else 0.0
        result[str(threads)] = {
            "messages": count,
            "ideal_per_s": ideal,
            "runs_per_s": rates,
            "median_per_s": median,
            "efficiency": median / ideal,
            "errors": [r.error for r in runs if r.error],
        }
        print(
            f"blocking threads {threads:>3}: {median:7.1f} tasks/s of {ideal:.0f} "
            f"({median / ideal:.1%})",
            flush=True,
        )
    return result


# -- the run ----------------------------------------------------------------------------------


def show(sample: Sample) -> None:
    if sample.error:
        print(
            f"  round {sample.round} {sample.benchmark:<16} {sample.side:<15} "
            f"ERROR {sample.error[:100]}"
        )
        return
    extra = ""
    if sample.connections is not None:
        extra = f"  conns {sample.connections}  rss {sample.rss_mb:5.1f} MB  {sample.loop}"
    print(
        f"  round {sample.round} {sample.benchmark:<16} {sample.side:<15} {sample.count:>7} msgs "
        f"{sample.seconds:7.3f} s {sample.rate:>9,.0f}/s  CPU {sample.cpu_us:6.1f} us/msg{extra}",
        flush=True,
    )


def baseline_side(settings: Settings, baseline: str) -> str:
    """The side name of a ``--baseline`` checkout: one is ``aqueue-sync-baseline``."""
    if len(settings.baselines) == 1:
        return "aqueue-sync-baseline"
    return f"aqueue-sync-{Path(baseline).resolve().name}"


async def run(settings: Settings) -> Results:
    results = Results()
    peers = [
        p
        for p in PEERS
        if PEERS[p].in_drain and (p in settings.peers or p.split("-")[0] in settings.peers)
    ]
    with tempfile.TemporaryDirectory(prefix="aqueue-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if "drain" in settings.only:
            print(f"drain: {settings.messages} messages, prefetch {settings.prefetch}", flush=True)
            for round_ in range(1, settings.repeat + 1):
                for name in peers:
                    results.samples.append(await drain_process(settings, PEERS[name], round_, tmp))
                    show(results.samples[-1])
                results.samples.append(await drain_aqueue_inprocess(settings, round_))
                show(results.samples[-1])
                results.samples.append(await drain_raw_inprocess(settings, round_))
                show(results.samples[-1])
        if "threads" in settings.only:
            threads = settings.drain_threads
            print(f"threads: {settings.messages} messages, {threads} threads", flush=True)
            sides = ["aqueue-sync", "raw-thread"]
            if "dramatiq" in settings.peers:
                sides.append("dramatiq")
            for round_ in range(1, settings.repeat + 1):
                for baseline in settings.baselines:
                    sample = await drain_process(
                        settings,
                        PEERS["aqueue-sync"],
                        round_,
                        tmp,
                        threads=threads,
                        benchmark="threads",
                        side=baseline_side(settings, baseline),
                        pythonpath=baseline,
                    )
                    results.samples.append(sample)
                    show(sample)
                for name in sides:
                    sample = await drain_process(
                        settings, PEERS[name], round_, tmp, threads=threads, benchmark="threads"
                    )
                    results.samples.append(sample)
                    show(sample)
        if "send" in settings.only:
            print("send", flush=True)
            plan = [
                ("send-concurrent", "aqueue"),
                ("send-concurrent", "raw"),
                ("send-many", "aqueue"),
                ("send-serial", "aqueue"),
                ("send-serial", "raw"),
            ]
            if "taskiq" in settings.peers:
                plan += [("send-concurrent", "taskiq"), ("send-serial", "taskiq")]
            if "dramatiq" in settings.peers:
                plan.append(("send-serial", "dramatiq"))
            for round_ in range(1, settings.repeat + 1):
                for benchmark, side in plan:
                    results.samples.append(await send_side(settings, benchmark, side, round_))
                    show(results.samples[-1])
        if "latency" in settings.only:
            rounds: dict[str, list[dict[str, Any]]] = {"aqueue": [], "raw": []}
            for round_ in range(1, settings.repeat + 1):
                for side in ("aqueue", "raw") if round_ % 2 else ("raw", "aqueue"):
                    sample = await latency(settings, side, tmp)
                    rounds[side].append(sample)
                    shown = {k: v for k, v in sample.items() if k != "samples_ms"}
                    print(f"latency {side} round {round_}: {shown}", flush=True)
            for side, samples in rounds.items():
                results.latency[side] = pooled_latency(samples)
        if "memory" in settings.only:
            results.memory = await memory(settings, tmp)
            print(f"memory: {results.memory}", flush=True)
        if "blocking" in settings.only:
            results.blocking = await blocking(settings, tmp)
        if "limits" in settings.only:
            # The same in-process drain, with and without a concurrency limit that never
            # binds (twice the worker's concurrency): the cost of taking and returning tokens.
            print(f"limits: {settings.messages} messages, a limit that never binds", flush=True)
            for round_ in range(1, settings.repeat + 1):
                for limited in (False, True) if round_ % 2 else (True, False):
                    limit = (
                        aqueue.Limit(new_queue("limit"), concurrency=2 * settings.prefetch)
                        if limited
                        else None
                    )
                    side = "aqueue-limit" if limited else "aqueue"
                    sample = await drain_aqueue_inprocess(
                        settings, round_, limit=limit, benchmark="limits", side=side
                    )
                    results.samples.append(sample)
                    show(sample)
    return results


# -- report -----------------------------------------------------------------------------------


def summarize(results: Results) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {}
    for s in results.samples:
        entry = table.setdefault(s.benchmark, {}).setdefault(
            s.side, {"rates": [], "cpu_us": [], "errors": [], "connections": [], "rss_mb": []}
        )
        if s.error:
            entry["errors"].append(s.error)
            continue
        entry["rates"].append(s.rate)
        entry["cpu_us"].append(s.cpu_us)
        if s.connections is not None:
            entry["connections"].append(s.connections)
            entry["rss_mb"].append(s.rss_mb)
        if s.loop:
            entry["loop"] = s.loop
    for sides in table.values():
        for entry in sides.values():
            entry["rate"] = statistics.median(entry["rates"]) if entry["rates"] else None
            entry["cpu"] = statistics.median(entry["cpu_us"]) if entry["cpu_us"] else None
    return table


def ratio(table: dict[str, Any], benchmark: str, a: str, b: str, key: str = "rate") -> float | None:
    try:
        x, y = table[benchmark][a][key], table[benchmark][b][key]
    except KeyError:
        return None
    return x / y if x and y else None


def best(table: dict[str, Any], benchmark: str, sides: list[str]) -> str | None:
    present = [s for s in sides if (table.get(benchmark, {}).get(s) or {}).get("rate")]
    return max(present, key=lambda s: table[benchmark][s]["rate"]) if present else None


def goals(results: Results, table: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(name: str, value: float | None, target: float, higher: bool, detail: str) -> None:
        ok = None if value is None else (value >= target if higher else value <= target)
        rows.append(
            {"goal": name, "value": value, "target": target, "higher_is_better": higher,
             "pass": ok, "detail": detail}
        )  # fmt: skip

    add("drain: aqueue worker / raw aio-pika", ratio(table, "drain", "aqueue", "raw"),
        GOALS["drain_vs_raw"], True, "as run: aqueue auto loop, raw asyncio.run")  # fmt: skip
    add("drain: same loop, asyncio", ratio(table, "drain", "aqueue-asyncio", "raw"),
        GOALS["drain_vs_raw"], True, "aqueue worker --loop asyncio / raw")  # fmt: skip
    add("drain: same loop, uvloop", ratio(table, "drain", "aqueue", "raw-uvloop"),
        GOALS["drain_vs_raw"], True, "aqueue worker (auto) / raw on uvloop")  # fmt: skip
    add("drain: aqueue Worker / raw, in-process", ratio(table, "drain-inproc", "aqueue", "raw"),
        GOALS["drain_vs_raw"], True, "both in the benchmark process")  # fmt: skip
    for peer, key in (("dramatiq", "drain_vs_dramatiq"), ("taskiq", "drain_vs_taskiq")):
        fastest = best(table, "drain", [peer, f"{peer}-async", f"{peer}-sync"])
        add(f"drain: aqueue / {peer} (its fastest: {fastest})",
            ratio(table, "drain", "aqueue", fastest) if fastest else None,
            GOALS[key], True, "")  # fmt: skip
    add("send: 100 concurrent aqueue / raw", ratio(table, "send-concurrent", "aqueue", "raw"),
        GOALS["send_concurrent_vs_raw"], True, "")  # fmt: skip
    add("send: one-at-a-time aqueue / dramatiq (confirms)",
        ratio(table, "send-serial", "aqueue", "dramatiq"), GOALS["send_serial_vs_dramatiq"],
        True, "must be ahead (> 1)")  # fmt: skip
    add("send: send_many / raw gathered", ratio(table, "send-many", "aqueue", "raw")
        if "send-many" in table else None, GOALS["send_many_vs_raw"], True,
        "raw = send-concurrent raw")  # fmt: skip
    if "send-many" in table and "send-concurrent" in table:
        many = table["send-many"]["aqueue"]["rate"]
        raw = table["send-concurrent"].get("raw", {}).get("rate")
        rows[-1]["value"] = many / raw if many and raw else None
        value = rows[-1]["value"]
        rows[-1]["pass"] = None if value is None else value >= GOALS["send_many_vs_raw"]
    lat = results.latency.get("aqueue", {})
    add("latency p50 (ms)", lat.get("p50_ms"), GOALS["latency_p50_ms"], False, "idle worker")
    add("latency p99 (ms)", lat.get("p99_ms"), GOALS["latency_p99_ms"], False, "idle worker")
    five = results.memory.get("actors_5", {})
    hundred = results.memory.get("actors_100", {})
    add("idle RSS, 5 actors (MB)", five.get("idle_rss_mb"), GOALS["idle_rss_mb"], False, "")
    add("start-up, 100 actors on 100 queues (s)", hundred.get("start_s"), GOALS["start_100_s"],
        False, "spawn to 'worker started', queues exist")  # fmt: skip
    add("connections, 100 actors", hundred.get("connections"), GOALS["connections_100"], False,
        "TCP connections to RabbitMQ")  # fmt: skip
    for threads, entry in results.blocking.items():
        add(f"blocking, {threads} threads (share of N x 10/s)", entry.get("efficiency"),
            GOALS["blocking_efficiency"], True, "")  # fmt: skip
    add("threads: blocking drain aqueue / dramatiq", ratio(table, "threads", "aqueue-sync",
        "dramatiq"), GOALS["threads_vs_dramatiq"], True, "same threads")  # fmt: skip
    add("threads: CPU per message aqueue / dramatiq", ratio(table, "threads", "aqueue-sync",
        "dramatiq", "cpu"), GOALS["threads_cpu_vs_dramatiq"], False, "")  # fmt: skip
    raw_lat = results.latency.get("raw", {})
    for q, key in (("p50", "latency_p50_vs_raw"), ("p99", "latency_p99_vs_raw")):
        a, b = lat.get(f"{q}_ms"), raw_lat.get(f"{q}_ms")
        add(f"latency {q}: aqueue / raw aio-pika", a / b if a and b else None, GOALS[key],
            False, "same run")  # fmt: skip
    return rows


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def print_report(settings: Settings, results: Results, table: dict[str, Any]) -> list[Any]:
    print()
    print(
        f"Throughput (msgs/s, median of {settings.repeat} alternating rounds) and CPU per "
        "message (us, of the consuming process for drains, of the sending process for sends)"
    )
    header = (
        f"{'benchmark':<16} {'side':<15} {'median/s':>10} {'vs raw':>7} {'CPU us':>7} "
        f"{'CPU/raw':>7} {'conns':>5} {'RSS MB':>6} {'loop':>7}  runs"
    )
    print(header)
    print("-" * len(header))
    for benchmark, sides in table.items():
        raw_side = "raw-thread" if benchmark == "threads" else "raw" if "raw" in sides else None
        if benchmark == "send-many":
            raw_entry = table.get("send-concurrent", {}).get("raw")
        else:
            raw_entry = sides.get(raw_side) if raw_side else None
        for side, e in sides.items():
            vs = (
                e["rate"] / raw_entry["rate"]
                if raw_entry and raw_entry["rate"] and e["rate"]
                else None
            )
            cpu_vs = (
                e["cpu"] / raw_entry["cpu"] if raw_entry and raw_entry["cpu"] and e["cpu"] else None
            )
            conns = str(max(e["connections"])) if e["connections"] else ""
            rss = fmt(statistics.median(e["rss_mb"]), ".1f") if e["rss_mb"] else ""
            runs = " ".join(fmt(r) for r in e["rates"])
            if e["errors"] and not e["rates"]:
                runs = "n/a: " + e["errors"][0][:60]
            print(
                f"{benchmark:<16} {side:<15} {fmt(e['rate']):>10} {fmt(vs, '.2f'):>7} "
                f"{fmt(e['cpu'], '.1f'):>7} {fmt(cpu_vs, '.2f'):>7} {conns:>5} {rss:>6} "
                f"{e.get('loop', ''):>7}  {runs}"
            )
    if results.latency:
        print()
        print("Send-to-start latency, idle worker process (ms)")
        for side, e in results.latency.items():
            if "error" in e:
                print(f"  {side:<8} ERROR {e['error'][:100]}")
            else:
                print(
                    f"  {side:<8} p50 {e['p50_ms']:.3f}  p90 {e['p90_ms']:.3f}  "
                    f"p99 {e['p99_ms']:.3f}  max {e['max_ms']:.3f}  ({e['messages']} sends)"
                )
                if e.get("rounds", 1) > 1:
                    p50s = ", ".join(f"{v:.3f}" for v in e["round_p50_ms"])
                    p99s = ", ".join(f"{v:.3f}" for v in e["round_p99_ms"])
                    print(f"  {'':8} {e['rounds']} rounds: p50 {p50s}; p99 {p99s}")
    rows = goals(results, table)
    print()
    print("Goals")
    for row in rows:
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[row["pass"]]
        op = ">=" if row["higher_is_better"] else "<="
        print(
            f"  {verdict:<4}  {row['goal']:<52} {fmt(row['value'], '.3f'):>8}  "
            f"({op} {row['target']})"
        )
    return rows


def environment() -> dict[str, str]:
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": str(os.cpu_count()),
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    for package in ("aqueue", "aio-pika", "aiormq", "anyio", "msgspec", "dramatiq", "pika",
                    "taskiq", "taskiq-aio-pika"):  # fmt: skip
        try:
            env[package] = version(package)
        except PackageNotFoundError:
            env[package] = "not installed"
    return env


SECTIONS = ["drain", "threads", "send", "latency", "memory", "blocking", "limits"]


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL, help="RabbitMQ URL")
    parser.add_argument("--messages", type=int, default=10000, help="messages per drain run")
    parser.add_argument("--send-messages", type=int, default=10000, help="per concurrent send run")
    parser.add_argument("--serial-messages", type=int, default=1000, help="per one-at-a-time run")
    parser.add_argument("--batch", type=int, default=1000, help="calls per send_many")
    parser.add_argument("--repeat", type=int, default=5, help="alternating rounds")
    parser.add_argument("--senders", type=int, default=100, help="concurrent senders")
    parser.add_argument("--prefetch", type=int, default=100, help="prefetch of the consumers")
    parser.add_argument("--latency-messages", type=int, default=500)
    parser.add_argument("--latency-gap", type=float, default=0.01, help="seconds between sends")
    parser.add_argument("--threads", default="8,32", help="thread counts for blocking actors")
    parser.add_argument(
        "--drain-threads", type=int, default=8, help="threads of the blocking drain (threads)"
    )
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="threads section: also run aqueue-sync from this checkout (before/after); "
        "several, comma-separated, are sides aqueue-sync-<directory name>",
    )
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"sections to run, of {','.join(SECTIONS)}"
    )
    parser.add_argument(
        "--peers",
        default="aqueue,raw,dramatiq,taskiq,exp",
        help="drain peers (aqueue and raw always; exp: the aiormq experiments)",
    )
    parser.add_argument("--json", dest="json_path", metavar="PATH", help="write results here")
    parser.add_argument(
        "--process-loop",
        choices=["asyncio", "uvloop"],
        default="asyncio",
        help="event loop of this process: the send sides, the latency senders and the "
        "in-process drains run on it (uvicorn runs a FastAPI app on uvloop when installed)",
    )
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    if unknown := set(only) - set(SECTIONS):
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    peers = sorted({"aqueue", "raw", *(p.strip() for p in args.peers.split(",") if p.strip())})
    return Settings(
        url=args.url,
        messages=args.messages,
        send_messages=args.send_messages,
        serial_messages=args.serial_messages,
        batch=args.batch,
        repeat=args.repeat,
        senders=args.senders,
        prefetch=args.prefetch,
        latency_messages=args.latency_messages,
        latency_gap=args.latency_gap,
        threads=[int(t) for t in args.threads.split(",") if t.strip()],
        drain_threads=args.drain_threads,
        baselines=[d.strip() for d in (args.baseline or "").split(",") if d.strip()],
        only=only,
        peers=peers,
        json_path=args.json_path,
        process_loop=args.process_loop,
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = parse_args(argv)
    started = time.monotonic()
    env_before = environment()
    print(f"environment: {env_before}", flush=True)
    if settings.process_loop == "uvloop":
        import uvloop

        results = uvloop.run(run(settings))
    else:
        results = asyncio.run(run(settings))
    for sample in results.samples:
        if sample.loop is None:  # measured in this process
            in_thread = sample.side == "dramatiq"
            sample.loop = "thread" if in_thread else settings.process_loop
    table = summarize(results)
    rows = print_report(settings, results, table)
    print(f"\ntotal time {time.monotonic() - started:.0f} s")
    if settings.json_path:
        document = {
            "settings": {k: v for k, v in asdict(settings).items() if k != "url"},
            "environment": env_before,
            "load_average_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "samples": [
                {**asdict(s), "rate": s.rate, "cpu_us_per_message": s.cpu_us}
                for s in results.samples
            ],
            "table": table,
            "latency": results.latency,
            "memory": results.memory,
            "blocking": results.blocking,
            "goals": rows,
        }
        Path(settings.json_path).write_text(json.dumps(document, indent=2) + "\n")
        print(f"results written to {settings.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
