"""Core benchmark of aqueue against raw aio-pika on a local RabbitMQ.

Run it from the repository root, with RabbitMQ on ``AQUEUE_BROKER_URL`` (default
``amqp://guest:guest@127.0.0.1:5672/``)::

    python benchmarks/bench_core.py --messages 20000 --repeat 3 --json out.json

What is measured, and how:

1. **Send throughput.** ``N`` messages are published by ``--senders`` (100) concurrent
   coroutines, each sending ``N / senders`` messages one after the other and awaiting
   each publisher confirm before the next send.

   * aqueue: ``await actor.send(i)`` on a typed ``async def`` actor (so argument
     checking and message encoding are part of the cost).
   * raw: ``aio_pika.connect_robust``, a channel with ``publisher_confirms=True``,
     ``default_exchange.publish(Message(body, delivery_mode=PERSISTENT),
     routing_key=queue, mandatory=True)``, with a body as long as aqueue's message.

   Connecting and declaring the queue happen before the clock starts; the clock stops
   when the last confirm arrived. Afterwards the queue must hold exactly ``N`` messages.

2. **Drain throughput.** A queue is pre-filled with ``N`` persistent messages (by
   aqueue for the aqueue side, so the bodies are valid aqueue messages; by aio-pika
   for the raw side), then the clock starts and the consumer is started on the
   already-open connection, with prefetch ``--prefetch`` (100) on both sides:

   * aqueue: one in-process ``aqueue.Worker`` on the queue, whose no-op ``async def``
     actor has ``concurrency=prefetch`` (so the worker's ``basic.qos`` is ``prefetch``).
     The actor counts its calls and reads the clock on the ``N``-th.
   * raw: a new channel, ``channel.set_qos(prefetch_count=prefetch)`` and
     ``queue.consume(callback)``, where the callback does ``await message.ack()``,
     counts, and reads the clock on the ``N``-th.

   On both sides the time covers opening the consumer channel, ``basic.qos``,
   ``basic.consume`` and processing all ``N`` messages. The worker is then stopped
   cleanly (outside the timed span) and the queue must be empty.

3. **Connections and channels of a worker process.** A temporary module declares 5
   actors on 5 queues (3 ``async def``, 2 blocking ``def``); ``python -m aqueue worker
   MODULE --threads 8`` runs it in a subprocess. Once it logged that it started, a few
   messages go to every queue (so the thread pool runs), and when they are processed its
   connections and channels are counted with ``rabbitmqctl list_connections`` and
   ``rabbitmqctl list_channels``, matching the connection by the ``connection_name``
   client property aqueue sets (``aqueue <role> <hostname> pid <pid>``); a worker holds
   two, one that consumes and one that publishes. Then the worker gets
   SIGTERM and must exit.

Besides wall-clock throughput, every timed span also reads this process's CPU time
(``time.process_time``), reported per message: on a shared, noisy machine it varies
much less than throughput and shows which side spends more Python time per message.
It includes everything running in this process during the span (on the drain side
that is the whole in-process consumer), but not RabbitMQ's own CPU.

Throughput runs alternate between the sides (aqueue, raw, aqueue, raw, ...) so that
drift in machine load hits both alike; one small untimed warm-up round comes first.
Every run has its own connection and freshly named queues (``bench-<uuid8>``), deleted
afterwards with their ``.XQ`` dead-letter queues, also on errors. The report gives
each run, the median of each side and the ratio of the medians (aqueue / raw).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aio_pika
import aiormq

import aqueue
from aqueue.topology import dead_letter_queue_name, queue_arguments

DEFAULT_URL = os.environ.get("AQUEUE_BROKER_URL") or "amqp://guest:guest@127.0.0.1:5672/"
ACTOR_NAME = "bench_noop"
SIDES = ("aqueue", "raw")
TARGETS = {"send": 0.85, "drain": 0.9}
TARGET_CONNECTIONS = 2  # a worker: one connection consumes, one publishes

log = logging.getLogger("bench_core")


# -- results ------------------------------------------------------------------------------


@dataclass
class Run:
    """One timed run of one side of one benchmark."""

    benchmark: str  # "send" or "drain"
    side: str  # "aqueue" or "raw"
    round: int
    messages: int
    seconds: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_us_per_message(self) -> float:
        return self.cpu_seconds / self.messages * 1e6


@dataclass
class ConnectionReport:
    """What one worker process holds on RabbitMQ."""

    connections: int
    channels: int
    channels_per_connection: list[int]
    connection_names: list[str]
    worker_exit_code: int | None
    queues: int = 5
    threads: int = 8
    error: str | None = None


@dataclass
class Settings:
    url: str
    messages: int
    repeat: int
    senders: int
    prefetch: int
    warmup: int
    json_path: str | None
    connections: bool
    rabbitmqctl: str


# -- helpers ------------------------------------------------------------------------------

#: A reading of (wall clock, CPU time of this process), both in seconds.
Instant = tuple[float, float]
#: The (wall, CPU) seconds a timed span took.
Span = tuple[float, float]


def now() -> Instant:
    return time.perf_counter(), time.process_time()


def since(start: Instant, end: Instant | None = None) -> Span:
    end = now() if end is None else end
    return end[0] - start[0], end[1] - start[1]


def new_queue_name(prefix: str = "bench") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def split_evenly(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if k < extra else 0) for k in range(parts)]


async def run_senders(
    messages: int, senders: int, send: Callable[[int], Awaitable[object]]
) -> Span:
    """Send ``messages`` with ``senders`` coroutines, each sequentially; return the time."""

    async def sender(start: int, count: int) -> None:
        for i in range(start, start + count):
            await send(i)

    jobs = []
    start = 0
    for count in split_evenly(messages, senders):
        jobs.append((start, count))
        start += count
    started = now()
    await asyncio.gather(*(sender(s, c) for s, c in jobs))
    return since(started)


async def message_count(url: str, queue: str) -> int:
    """Ready messages in ``queue`` (a passive declare on a throwaway connection)."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        assert declared.declaration_result.message_count is not None
        return int(declared.declaration_result.message_count)
    finally:
        await connection.close()


async def wait_for_count(url: str, queue: str, expected: int, timeout: float = 15.0) -> None:
    """Wait until ``queue`` holds exactly ``expected`` ready messages."""
    deadline = time.monotonic() + timeout
    while True:
        count = await message_count(url, queue)
        if count == expected:
            return
        if time.monotonic() >= deadline:
            raise RuntimeError(f"queue {queue} holds {count} messages, expected {expected}")
        await asyncio.sleep(0.05)


async def delete_queues(url: str, names: list[str]) -> None:
    """Delete ``names`` (missing ones are fine); never raises."""
    try:
        connection = await aio_pika.connect(url)
    except Exception as exc:
        log.warning("cannot connect to delete queues %s: %s", names, exc)
        return
    try:
        for name in names:
            channel = await connection.channel()
            try:
                await channel.queue_delete(name)
            except aiormq.exceptions.AMQPError as exc:
                log.warning("cannot delete queue %s: %s", name, exc)
            finally:
                if not channel.is_closed:
                    await channel.close()
    finally:
        await connection.close()


def aqueue_body_size(queue: str) -> int:
    message = aqueue.Message(queue_name=queue, actor_name=ACTOR_NAME, args=(12345,))
    return len(message.encode())


def drain_timeout(messages: int) -> float:
    return max(60.0, messages / 100)


# -- send ---------------------------------------------------------------------------------


async def send_aqueue(settings: Settings, messages: int) -> Span:
    queue = new_queue_name()
    broker = aqueue.RabbitmqBroker(settings.url)
    try:

        @broker.actor(queue_name=queue, actor_name=ACTOR_NAME)
        async def bench_noop(i: int) -> None:
            return None

        await broker.connect()
        await broker.declare_queue(queue)
        elapsed = await run_senders(messages, settings.senders, bench_noop.send)
        await wait_for_count(settings.url, queue, messages)
        return elapsed
    finally:
        await broker.close()
        await delete_queues(settings.url, [queue, dead_letter_queue_name(queue)])


async def send_raw(settings: Settings, messages: int) -> Span:
    queue = new_queue_name()
    body = b"x" * aqueue_body_size(queue)
    connection = await aio_pika.connect_robust(settings.url)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await channel.declare_queue(dead_letter_queue_name(queue), durable=True)
        await channel.declare_queue(queue, durable=True, arguments=queue_arguments(queue))
        exchange = channel.default_exchange

        async def send(i: int) -> None:
            message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await exchange.publish(message, routing_key=queue, mandatory=True)

        elapsed = await run_senders(messages, settings.senders, send)
        await wait_for_count(settings.url, queue, messages)
        return elapsed
    finally:
        await connection.close()
        await delete_queues(settings.url, [queue, dead_letter_queue_name(queue)])


# -- drain --------------------------------------------------------------------------------


async def drain_aqueue(settings: Settings, messages: int) -> Span:
    queue = new_queue_name()
    broker = aqueue.RabbitmqBroker(settings.url)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Instant] = loop.create_future()
    processed = 0
    try:

        @broker.actor(queue_name=queue, actor_name=ACTOR_NAME, concurrency=settings.prefetch)
        async def bench_noop(i: int) -> None:
            nonlocal processed
            processed += 1
            if processed == messages:
                done.set_result(now())

        await broker.connect()
        await broker.declare_queue(queue)
        await run_senders(messages, settings.senders, bench_noop.send)
        await wait_for_count(settings.url, queue, messages)

        worker = aqueue.Worker(broker, queues=[queue], concurrency=settings.prefetch)
        prefetch = worker.plan()[0].prefetch
        if prefetch != settings.prefetch:
            raise RuntimeError(f"worker prefetch is {prefetch}, expected {settings.prefetch}")
        gc.collect()
        started = now()
        await worker.start()
        try:
            finished = await asyncio.wait_for(done, drain_timeout(messages))
        except asyncio.TimeoutError:
            raise RuntimeError(
                f"aqueue worker processed only {processed} of {messages} messages "
                f"within {drain_timeout(messages):.0f} s"
            ) from None
        finally:
            await worker.stop()
        await wait_for_count(settings.url, queue, 0)
        return since(started, finished)
    finally:
        await broker.close()
        await delete_queues(settings.url, [queue, dead_letter_queue_name(queue)])


async def drain_raw(settings: Settings, messages: int) -> Span:
    queue_name = new_queue_name()
    body = b"x" * aqueue_body_size(queue_name)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Instant] = loop.create_future()
    processed = 0
    connection = await aio_pika.connect_robust(settings.url)
    try:
        setup = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await setup.declare_queue(dead_letter_queue_name(queue_name), durable=True)
        await setup.declare_queue(queue_name, durable=True, arguments=queue_arguments(queue_name))

        async def send(i: int) -> None:
            message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await setup.default_exchange.publish(message, routing_key=queue_name, mandatory=True)

        await run_senders(messages, settings.senders, send)
        await wait_for_count(settings.url, queue_name, messages)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal processed
            await message.ack()
            processed += 1
            if processed == messages:
                done.set_result(now())

        gc.collect()
        started = now()
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=settings.prefetch)
        queue = await channel.get_queue(queue_name, ensure=False)
        consumer_tag = await queue.consume(on_message)
        try:
            finished = await asyncio.wait_for(done, drain_timeout(messages))
        except asyncio.TimeoutError:
            raise RuntimeError(
                f"raw consumer processed only {processed} of {messages} messages "
                f"within {drain_timeout(messages):.0f} s"
            ) from None
        finally:
            await queue.cancel(consumer_tag)
            await channel.close()
        await wait_for_count(settings.url, queue_name, 0)
        return since(started, finished)
    finally:
        await connection.close()
        await delete_queues(settings.url, [queue_name, dead_letter_queue_name(queue_name)])


BENCHMARKS: dict[str, dict[str, Callable[[Settings, int], Awaitable[Span]]]] = {
    "send": {"aqueue": send_aqueue, "raw": send_raw},
    "drain": {"aqueue": drain_aqueue, "raw": drain_raw},
}


async def run_throughput(settings: Settings) -> list[Run]:
    if settings.warmup:
        print(f"warm-up: {settings.warmup} messages per side (not reported)", flush=True)
        for sides in BENCHMARKS.values():
            for side in SIDES:
                await sides[side](settings, settings.warmup)
    runs: list[Run] = []
    for round_ in range(1, settings.repeat + 1):
        for benchmark, sides in BENCHMARKS.items():
            for side in SIDES:
                gc.collect()
                await asyncio.sleep(0.5)  # let RabbitMQ finish deleting the last queues
                seconds, cpu_seconds = await sides[side](settings, settings.messages)
                run = Run(benchmark, side, round_, settings.messages, seconds, cpu_seconds)
                runs.append(run)
                print(
                    f"round {round_}  {benchmark:<5}  {side:<6}  {settings.messages:>7} msgs  "
                    f"{seconds:8.3f} s  {run.rate:>9,.0f} msgs/s  "
                    f"CPU {run.cpu_us_per_message:5.0f} us/msg",
                    flush=True,
                )
    return runs


# -- connections --------------------------------------------------------------------------

WORKER_MODULE = '''
"""Five actors on five queues, 3 async and 2 blocking (generated by benchmarks/)."""

import time

import aqueue

broker = aqueue.RabbitmqBroker()


@broker.actor(queue_name="{prefix}-0")
async def async_0(x: int) -> None:
    return None


@broker.actor(queue_name="{prefix}-1")
async def async_1(x: int) -> None:
    return None


@broker.actor(queue_name="{prefix}-2")
async def async_2(x: int) -> None:
    return None


@broker.actor(queue_name="{prefix}-3")
def blocking_3(x: int) -> None:
    time.sleep(0.01)


@broker.actor(queue_name="{prefix}-4")
def blocking_4(x: int) -> None:
    time.sleep(0.01)
'''

WORKER_ACTORS = ["async_0", "async_1", "async_2", "blocking_3", "blocking_4"]


def rabbitmqctl_json(settings: Settings, *args: str) -> list[dict[str, Any]]:
    completed = subprocess.run(
        [settings.rabbitmqctl, *args, "--formatter", "json", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows: list[dict[str, Any]] = json.loads(completed.stdout or "[]")
    return rows


def connection_name(row: dict[str, Any]) -> str:
    for key, _type, value in row.get("client_properties") or []:
        if key == "connection_name":
            return str(value)
    return ""


def count_worker_connections(settings: Settings, pid: int) -> tuple[list[str], list[int]]:
    """Names of the connections of OS process ``pid`` and the channel count of each."""
    suffix = f" pid {pid}"
    mine = {
        row["pid"]: connection_name(row)
        for row in rabbitmqctl_json(settings, "list_connections", "pid", "client_properties")
        if connection_name(row).startswith("aqueue ") and connection_name(row).endswith(suffix)
    }
    channels = dict.fromkeys(mine, 0)
    for row in rabbitmqctl_json(settings, "list_channels", "connection", "number"):
        if row["connection"] in channels:
            channels[row["connection"]] += 1
    return list(mine.values()), [channels[pid] for pid in mine]


def wait_for_log(
    process: subprocess.Popen[bytes], log_path: Path, text: str, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while text not in log_path.read_text(errors="replace"):
        if process.poll() is not None:
            raise RuntimeError(
                f"worker exited with {process.returncode} before {text!r}:\n"
                + log_path.read_text(errors="replace")
            )
        if time.monotonic() >= deadline:
            raise RuntimeError(f"no {text!r} from the worker within {timeout} s")
        time.sleep(0.1)


async def feed_and_wait(settings: Settings, queues: list[str], per_queue: int) -> None:
    """Send ``per_queue`` messages to every worker queue and wait until all are settled."""
    broker = aqueue.RabbitmqBroker(settings.url)
    try:
        for queue, actor_name in zip(queues, WORKER_ACTORS, strict=True):
            for i in range(per_queue):
                await broker.enqueue(
                    aqueue.Message(queue_name=queue, actor_name=actor_name, args=(i,))
                )
    finally:
        await broker.close()
    deadline = time.monotonic() + 30
    wanted = set(queues)
    while time.monotonic() < deadline:
        rows = rabbitmqctl_json(settings, "list_queues", "name", "messages")
        if all(row["messages"] == 0 for row in rows if row["name"] in wanted):
            return
        await asyncio.sleep(0.2)
    raise RuntimeError("the worker did not process the test messages within 30 s")


def measure_connections(settings: Settings) -> ConnectionReport:
    tag = uuid.uuid4().hex[:8]
    prefix = f"bench-conn-{tag}"
    module = f"aqueue_bench_conn_{tag}"
    queues = [f"{prefix}-{k}" for k in range(5)]
    with tempfile.TemporaryDirectory(prefix="aqueue-bench-") as tmp:
        directory = Path(tmp)
        (directory / f"{module}.py").write_text(
            textwrap.dedent(WORKER_MODULE).lstrip().format(prefix=prefix)
        )
        log_path = directory / "worker.log"
        env = {
            **os.environ,
            "AQUEUE_BROKER_URL": settings.url,
            "PYTHONPATH": os.pathsep.join(filter(None, [tmp, os.environ.get("PYTHONPATH")])),
        }
        command = [sys.executable, "-m", "aqueue", "worker", module, "--threads", "8"]
        process: subprocess.Popen[bytes] | None = None
        exit_code: int | None = None
        try:
            with log_path.open("wb") as log_file:
                process = subprocess.Popen(
                    command, cwd=tmp, env=env, stdout=log_file, stderr=subprocess.STDOUT
                )
                wait_for_log(process, log_path, "worker started", timeout=60)
                asyncio.run(feed_and_wait(settings, queues, per_queue=20))
                names, channels = count_worker_connections(settings, process.pid)
                process.send_signal(signal.SIGTERM)
                exit_code = process.wait(timeout=60)
            if exit_code != 0:
                log.warning("worker log:\n%s", log_path.read_text(errors="replace"))
            return ConnectionReport(
                connections=len(names),
                channels=sum(channels),
                channels_per_connection=channels,
                connection_names=names,
                worker_exit_code=exit_code,
            )
        except Exception as exc:
            log.error("connection count failed: %s", exc)
            return ConnectionReport(
                connections=-1,
                channels=-1,
                channels_per_connection=[],
                connection_names=[],
                worker_exit_code=exit_code,
                error=f"{type(exc).__name__}: {exc}",
            )
        finally:
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
            asyncio.run(
                delete_queues(settings.url, queues + [dead_letter_queue_name(q) for q in queues])
            )


# -- report -------------------------------------------------------------------------------


def summarize(runs: list[Run]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for benchmark in BENCHMARKS:
        entry: dict[str, Any] = {}
        for side in SIDES:
            mine = [r for r in runs if r.benchmark == benchmark and r.side == side]
            rates = [r.rate for r in mine]
            cpu = [r.cpu_us_per_message for r in mine]
            entry[side] = {
                "runs": rates,
                "median": statistics.median(rates) if rates else 0.0,
                "cpu_us_per_message": cpu,
                "cpu_median": statistics.median(cpu) if cpu else 0.0,
            }
        raw = entry["raw"]["median"]
        entry["ratio"] = entry["aqueue"]["median"] / raw if raw else 0.0
        raw_cpu = entry["raw"]["cpu_median"]
        entry["cpu_ratio"] = entry["aqueue"]["cpu_median"] / raw_cpu if raw_cpu else 0.0
        entry["target"] = TARGETS[benchmark]
        entry["pass"] = entry["ratio"] >= TARGETS[benchmark]
        summary[benchmark] = entry
    return summary


def print_table(
    settings: Settings, summary: dict[str, dict[str, Any]], connections: ConnectionReport | None
) -> None:
    run_headers = "  ".join(f"{'run ' + str(k):>9}" for k in range(1, settings.repeat + 1))
    header = f"{'benchmark':<10} {'side':<7} {run_headers}  {'median':>9}"
    print()
    print(
        f"aqueue core benchmark: {settings.messages} messages, {settings.senders} senders, "
        f"prefetch {settings.prefetch}, {settings.repeat} rounds (msgs/s)"
    )
    print(header)
    print("-" * len(header))
    for benchmark, entry in summary.items():
        for side in SIDES:
            cells = "  ".join(f"{rate:>9,.0f}" for rate in entry[side]["runs"])
            print(f"{benchmark:<10} {side:<7} {cells}  {entry[side]['median']:>9,.0f}")
        verdict = "PASS" if entry["pass"] else "FAIL"
        print(
            f"{benchmark:<10} {'ratio':<7} {'':>{len(run_headers)}}  {entry['ratio']:>9.3f}"
            f"  (target >= {entry['target']}: {verdict})"
        )
    print("-" * len(header))
    print("CPU time of this process per message, in microseconds (lower is better)")
    for benchmark, entry in summary.items():
        for side in SIDES:
            cells = "  ".join(f"{us:>9,.0f}" for us in entry[side]["cpu_us_per_message"])
            print(f"{benchmark:<10} {side:<7} {cells}  {entry[side]['cpu_median']:>9,.0f}")
        print(
            f"{benchmark:<10} {'ratio':<7} {'':>{len(run_headers)}}  {entry['cpu_ratio']:>9.3f}"
            "  (aqueue / raw)"
        )
    if connections is not None:
        print("-" * len(header))
        if connections.error:
            print(f"worker connections: ERROR {connections.error}")
        else:
            verdict = "PASS" if connections.connections == TARGET_CONNECTIONS else "FAIL"
            print(
                f"worker (5 actors on 5 queues, threads 8): connections {connections.connections}"
                f" (target {TARGET_CONNECTIONS}: {verdict}), channels {connections.channels}"
                f" {connections.channels_per_connection}, exit code {connections.worker_exit_code}"
            )


def environment() -> dict[str, str]:
    from importlib.metadata import version

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpus": str(os.cpu_count()),
        "aqueue": aqueue.__version__,
        "aio-pika": version("aio-pika"),
        "aiormq": version("aiormq"),
        "anyio": version("anyio"),
        "msgspec": version("msgspec"),
    }


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(
        description="Send and drain throughput of aqueue against raw aio-pika, "
        "and the connections of a worker process."
    )
    parser.add_argument("--url", default=DEFAULT_URL, help="RabbitMQ URL")
    parser.add_argument("--messages", type=int, default=20000, help="messages per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per side")
    parser.add_argument("--senders", type=int, default=100, help="concurrent senders")
    parser.add_argument("--prefetch", type=int, default=100, help="prefetch of both consumers")
    parser.add_argument(
        "--warmup", type=int, default=1000, help="messages of the untimed warm-up (0: none)"
    )
    parser.add_argument("--json", dest="json_path", metavar="PATH", help="write results here")
    parser.add_argument(
        "--no-connections", action="store_true", help="skip the worker connection count"
    )
    parser.add_argument("--rabbitmqctl", default="rabbitmqctl", help="rabbitmqctl executable")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.repeat < 1 or args.senders < 1 or args.prefetch < 1:
        parser.error("--messages, --repeat, --senders and --prefetch must be positive")
    return Settings(
        url=args.url,
        messages=args.messages,
        repeat=args.repeat,
        senders=args.senders,
        prefetch=args.prefetch,
        warmup=args.warmup,
        json_path=args.json_path,
        connections=not args.no_connections,
        rabbitmqctl=args.rabbitmqctl,
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = parse_args(argv)
    started = time.monotonic()
    runs = asyncio.run(run_throughput(settings))
    summary = summarize(runs)
    connections = None
    if settings.connections:
        print("counting the connections of a worker process ...", flush=True)
        connections = measure_connections(settings)
    print_table(settings, summary, connections)
    print(f"\ntotal time {time.monotonic() - started:.0f} s")
    if settings.json_path:
        result = {
            "settings": {k: v for k, v in asdict(settings).items() if k != "url"},
            "environment": environment(),
            "runs": [
                {**asdict(r), "rate": r.rate, "cpu_us_per_message": r.cpu_us_per_message}
                for r in runs
            ],
            "summary": summary,
            "connections": None if connections is None else asdict(connections),
        }
        Path(settings.json_path).write_text(json.dumps(result, indent=2) + "\n")
        print(f"results written to {settings.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
