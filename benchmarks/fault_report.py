"""A fault report: messages sent through a broker restart and a killed worker, none lost.

Run it from the repository root on a machine whose RabbitMQ you may restart (it runs
``rabbitmqctl stop_app`` and ``start_app``, so it needs rabbitmqctl and the rights to use
it; do not run it against a RabbitMQ that others use)::

    python benchmarks/fault_report.py

The fixed scenario:

1. Two worker processes, ``aqueue worker`` from the command line, consume one queue. The
   actor appends each message's number to a file of its process, then returns (so the
   record is written before the ack: a message recorded twice is a duplicate, a message
   never recorded is lost).
2. A producer in this script sends 20,000 messages at a steady rate (``--rate`` per
   second) with ``send()``, which waits for the broker's confirm. A send that raises
   ``BrokerConnectionError`` (no confirm within ``--publish-timeout``) is a *send failure*:
   not counted as confirmed, and not retried.
3. At a quarter of the messages, one worker gets SIGKILL, and is started again a second
   later, as a process manager would.
4. At half of the messages, RabbitMQ is stopped (``rabbitmqctl stop_app``) for
   ``--down-for`` seconds, then started again. Producer and workers reconnect on their own.
5. When the producer is done, the script waits until every confirmed message was processed
   (or ``--drain-timeout`` passes), stops the workers with SIGTERM and counts.

It prints sent, confirmed, processed, duplicates, lost and send failures, and for each
fault the time until things worked again. It exits 1 if a confirmed message was lost.
RabbitMQ is always started again at the end, and the queues are deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika

import aqueue

URL = os.environ.get("AQUEUE_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")

ACTORS = """
import asyncio
import os
import time

import aqueue

broker = aqueue.RabbitmqBroker()
_out = open(
    os.path.join(os.environ["FAULT_OUT"], f"processed-{os.getpid()}.txt"), "a", buffering=1
)


@aqueue.actor(broker=broker, queue_name=os.environ["FAULT_QUEUE"], concurrency=50)
async def record(n: int) -> None:
    await asyncio.sleep(0.001)  # a little work
    _out.write(f"{n} {time.time():.6f} {os.getpid()}\\n")  # one write(2) per line
"""


@dataclass
class Fault:
    name: str
    at: float  # when it happened (time.time())
    notes: dict[str, float] = field(default_factory=dict)  # what came back, and when
    victim_pid: int | None = None
    replacement_pid: int | None = None


@dataclass
class Run:
    directory: Path
    queue: str
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    confirmed: set[int] = field(default_factory=set)
    confirm_times: list[tuple[float, int]] = field(default_factory=list)
    failures: list[tuple[float, int, str]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    sent = 0

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "AQUEUE_BROKER_URL": URL,
            "FAULT_QUEUE": self.queue,
            "FAULT_OUT": str(self.directory),
            "PYTHONPATH": str(self.directory),
        }

    def start_worker(self) -> subprocess.Popen[bytes]:
        log = open(self.directory / f"worker-{len(self.workers)}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(
            [sys.executable, "-m", "aqueue", "worker", "fault_actors", "--log-level", "warning"],
            cwd=self.directory,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.workers.append(process)
        return process

    def records(self) -> list[tuple[int, float, int]]:
        """(message number, when processed, worker pid) of every processed message."""
        out = []
        for path in self.directory.glob("processed-*.txt"):
            for line in path.read_text().splitlines():
                parts = line.split()
                if len(parts) == 3:  # a line cut by SIGKILL would be shorter
                    out.append((int(parts[0]), float(parts[1]), int(parts[2])))
        return out


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


async def produce(run: Run, broker: aqueue.RabbitmqBroker, total: int, rate: float) -> None:
    record = broker.actor(actor_name="record", queue_name=run.queue)(_placeholder)
    started = time.monotonic()
    in_flight: set[asyncio.Task[None]] = set()
    limit = asyncio.Semaphore(200)

    async def send(n: int) -> None:
        try:
            await record.send(n)
        except aqueue.BrokerConnectionError as exc:
            run.failures.append((time.time(), n, str(exc)))
        else:
            run.confirmed.add(n)
            run.confirm_times.append((time.time(), n))
        finally:
            limit.release()

    for n in range(total):
        # A steady rate, whatever happens to the broker: like requests arriving at a web app.
        await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
        await limit.acquire()
        task = asyncio.ensure_future(send(n))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        run.sent += 1
    await asyncio.gather(*in_flight)


def _placeholder(n: int) -> None: ...


async def wait_for(condition: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def kill_a_worker(run: Run, restart_after: float) -> None:
    victim = run.workers[0]
    fault = Fault("SIGKILL of a worker", time.time(), victim_pid=victim.pid)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    run.faults.append(fault)
    await asyncio.sleep(restart_after)
    replacement = run.start_worker()
    fault.notes["replacement worker started"] = time.time()
    fault.replacement_pid = replacement.pid
    await wait_for(lambda: any(pid == replacement.pid for _, _, pid in run.records()), 60)


def restart_rabbitmq(run: Run, down_for: float) -> None:
    fault = Fault("RabbitMQ restart", time.time())
    run.faults.append(fault)
    rabbitmqctl("stop_app")
    try:
        fault.notes["stopped"] = time.time()
        time.sleep(down_for)
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
    fault.notes["RabbitMQ back"] = time.time()


async def scenario(args: argparse.Namespace, run: Run) -> None:
    (run.directory / "fault_actors.py").write_text(textwrap.dedent(ACTORS))
    broker = aqueue.RabbitmqBroker(
        URL, publish_timeout=args.publish_timeout, reconnect_interval=0.5
    )
    try:
        await broker.declare_queue(run.queue)
        for _ in range(args.workers):
            run.start_worker()

        async def all_consuming() -> bool:
            info = await broker.queue_info(run.queue)
            return info is not None and info.consumers == args.workers

        deadline = time.monotonic() + 60
        while not await all_consuming():
            if time.monotonic() > deadline:
                raise SystemExit("the workers did not start consuming within 60 s")
            await asyncio.sleep(0.1)

        print(
            f"sending {args.messages} messages at {args.rate:.0f}/s to {args.workers} workers; "
            f"SIGKILL at {args.messages // 4}, RabbitMQ down for {args.down_for:.0f} s "
            f"at {args.messages // 2}",
            flush=True,
        )
        started = time.time()
        producer = asyncio.ensure_future(produce(run, broker, args.messages, args.rate))
        await wait_for(lambda: run.sent >= args.messages // 4, 600)
        await kill_a_worker(run, restart_after=1.0)
        await wait_for(lambda: run.sent >= args.messages // 2, 600)
        await asyncio.to_thread(restart_rabbitmq, run, args.down_for)
        await producer
        sending_took = time.time() - started

        def drained() -> bool:
            return run.confirmed <= {n for n, _, _ in run.records()}

        drained_in_time = await wait_for(drained, args.drain_timeout)
        took = time.time() - started
        for process in run.workers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in run.workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(40)
        dead_letters = await broker.dead_letters(run.queue, limit=1000)
        report(run, sending_took, took, drained_in_time, len(dead_letters))
    finally:
        for process in run.workers:
            if process.poll() is None:
                process.kill()
                process.wait()
        await broker.close()


def report(run: Run, sending_took: float, took: float, drained: bool, dead_letters: int) -> None:
    records = run.records()
    counts = Counter(n for n, _, _ in records)
    processed = set(counts)
    duplicates = sum(c - 1 for c in counts.values())
    lost = run.confirmed - processed
    unconfirmed = set(range(run.sent)) - run.confirmed
    print()
    print(f"sent                {run.sent:8d}")
    print(f"confirmed           {len(run.confirmed):8d}")
    print(f"send failures       {len(run.failures):8d}   (BrokerConnectionError, not retried)")
    print(f"processed (unique)  {len(processed):8d}")
    print(f"processed records   {len(records):8d}")
    print(f"duplicates          {duplicates:8d}   (processed more than once)")
    print(f"lost                {len(lost):8d}   (confirmed, never processed)")
    print(
        f"unconfirmed, ran    {len(unconfirmed & processed):8d}   "
        "(a failed send that had reached the queue after all)"
    )
    print(f"dead letters        {dead_letters:8d}")
    print(f"sending took        {sending_took:8.1f} s")
    print(f"all processed after {took:8.1f} s{'' if drained else '  (drain timed out)'}")
    first_run: dict[int, float] = {}
    for n, t, _ in records:
        first_run[n] = min(t, first_run.get(n, t))
    for fault in run.faults:
        print()
        print(f"{fault.name}, {fault.at - run.faults[0].at:.1f} s after the first fault:")
        for what, when in fault.notes.items():
            print(f"  {what:<44} {when - fault.at:6.2f} s after the fault")
        back = fault.notes.get("RabbitMQ back", fault.at)
        processed_after = [t for _, t, _ in records if t > back]
        if processed_after:
            first = min(processed_after) - fault.at
            print(f"  {'first message processed after it':<44} {first:6.2f} s")
        replacement = [t for _, t, pid in records if pid == fault.replacement_pid]
        if replacement:
            what = "replacement worker processed its first"
            print(f"  {what:<44} {min(replacement) - fault.at:6.2f} s")
        confirms = [t for t, _ in run.confirm_times if t > back]
        if confirms:
            print(f"  {'first send confirmed after it':<44} {min(confirms) - fault.at:6.2f} s")
        # A message first run just before the fault or during it, then again after it.
        again = sum(
            c - 1 for n, c in counts.items() if c > 1 and fault.at - 1 <= first_run[n] <= back
        )
        print(f"  {'duplicates (first run at the fault)':<44} {again:6d}")
        if fault.victim_pid is None:
            failed = [t for t, _, _ in run.failures if t >= fault.at]
            print(f"  {'send failures':<44} {len(failed):6d}")
    if run.failures:
        print()
        print(f"first send failure: {run.failures[0][2]}")
    if lost:
        print(f"\nLOST: {sorted(lost)[:50]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=1000.0, help="messages sent per second")
    parser.add_argument("--down-for", type=float, default=5.0, help="seconds RabbitMQ is down")
    parser.add_argument("--publish-timeout", type=float, default=3.0)
    parser.add_argument("--drain-timeout", type=float, default=180.0)
    args = parser.parse_args()
    # The producer's reconnection attempts during the outage are expected: not shown.
    for name in ("aiormq", "aio_pika"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    run = Run(Path(tempfile.mkdtemp(prefix="aqueue-faults-")), f"faults-{uuid.uuid4().hex[:8]}")
    try:
        asyncio.run(scenario(args, run))
    finally:
        # Whatever happened: RabbitMQ running, the queues gone.
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
        asyncio.run(delete_queues(run.queue))
    counts = Counter(n for n, _, _ in run.records())
    lost = run.confirmed - set(counts)
    print(f"\nworker logs and records: {run.directory}")
    return 1 if lost or not run.confirmed else 0


async def delete_queues(queue: str) -> None:
    connection = await aio_pika.connect(URL)
    async with connection, connection.channel() as channel:
        await channel.queue_delete(queue)
        await channel.queue_delete(queue + ".XQ")


if __name__ == "__main__":
    sys.exit(main())
