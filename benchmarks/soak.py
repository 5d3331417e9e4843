"""A chaos soak: messages sent for a set time through a 3-node RabbitMQ cluster while nodes
restart, worker processes are killed, connections are reset and a resource alarm comes and
goes, at random; then it drains and counts what was lost, run twice, and how long work stalled.

Run it from the repository root::

    python benchmarks/soak.py                 # 10 minutes
    python benchmarks/soak.py --minutes 2 --seed 7

It starts (or repairs) the cluster of ``scripts/cluster.sh`` (aqueue-c1..c3@localhost,
AMQP on 5681-5683) and leaves it running; ``bash scripts/cluster.sh stop`` stops it. It
never touches another RabbitMQ: every ``rabbitmqctl`` call names one of those three nodes.

Set-up. One quorum queue of the run's own. ``aqueue worker --processes 2`` consumes it
(a supervisor and two worker processes). The actor appends each message's number to a
file of its process before it returns, so before the ack (the fault report's method,
``_fault_scenarios.py``): a confirmed message never recorded (nor dead-lettered) is lost,
one recorded twice ran twice. This process sends ``--rate`` messages a second with
``send()`` (which waits for the confirm; a send that raises after ``--publish-timeout`` is
a send failure, not confirmed, not retried). Every connection of the run, the producer's
and the workers', goes through a TCP proxy per node (``_fault_proxy.py``), and every
process is given the three proxied URLs.

Faults, one at a time, the next ``--fault-every`` s (x 0.5 to 1.5, at random) after the
previous one ended, of a kind drawn at random (weights in ``--weights``):

``restart``
    A random node is restarted as in a rolling restart: once stopping it loses no quorum
    (``rabbitmq-queues check_if_node_is_quorum_critical``), it is stopped, stays down 2-8 s
    and is started again, until the other nodes see it running. Half the time with
    ``stop_app`` / ``start_app`` (the Erlang VM stays up), half the time the whole node
    (``scripts/cluster.sh restart-node``: the VM shut down and booted again).
``kill``
    SIGKILL of one of the two worker processes, at random; the supervisor starts another.
``reset``
    Every connection of the run is reset (all three proxies), or every connection to one
    node (its proxy), at random.
``alarm``
    A memory alarm of 3-10 s on aqueue-c2 only (``set_vm_memory_high_watermark 0.0001``,
    the previous watermark restored in a ``finally``, and again when the soak ends).
    RabbitMQ then blocks publishing on every node of the cluster, so sends fail with
    ``BrokerBlockedError`` after ``--publish-timeout``; consuming goes on.

It then sends for ``--tail`` s without faults, stops sending, waits until every confirmed
message ran (or ``--drain-timeout``), checks that the queue has one consumer per worker
process again, stops the workers with SIGTERM and prints: sent, confirmed, send failures,
processed, duplicated, lost, dead-lettered, the longest stall (the longest time a
confirmed message waited while nothing at all was processed), each fault and the longest
stall during it, and the longest stall per kind of fault. It exits 1 if a confirmed
message was lost (or none was confirmed), 2 if the consumers per queue did not come back
to one per worker process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import _soak_cluster as cluster
import aio_pika
from _fault_proxy import ProxyThread
from _fault_scenarios import (
    Fault,
    Figures,
    Run,
    drain,
    figures,
    longest_stall,
    print_figures,
    produce,
    wait_for,
    wait_for_async,
)

import aqueue

ACTORS = """
import asyncio
import os
import time

import aqueue

# AQUEUE_BROKER_URL: the three proxied URLs, comma-separated.
broker = aqueue.RabbitmqBroker(
    queue_type="quorum",
    connect_timeout=float(os.environ.get("SOAK_CONNECT_TIMEOUT", "10")),
    reconnect_interval=0.5,
)
_out = open(
    os.path.join(os.environ["FAULT_OUT"], f"processed-{os.getpid()}.txt"), "a", buffering=1
)


@aqueue.actor(broker=broker, queue_name=os.environ["FAULT_QUEUE"], concurrency=50)
async def record(n: int) -> None:
    await asyncio.sleep(0.002)  # a little work
    # Recorded before the actor returns, so before the ack; one write(2) per line.
    _out.write(f"done {n} {time.time():.6f} {os.getpid()}\\n")
"""

KINDS = ("restart", "kill", "reset", "alarm")


@dataclass
class SoakRun(Run):
    """A fault-report run whose worker is one ``aqueue worker --processes N``."""

    processes: int = 2
    children_seen: set[int] = field(default_factory=set)

    def start_worker(self) -> subprocess.Popen[bytes]:
        (self.directory / "soak_actors.py").write_text(textwrap.dedent(ACTORS))
        log = open(self.directory / f"worker-{len(self.workers)}.log", "wb")  # noqa: SIM115
        command = [sys.executable, "-m", "aqueue", "worker", "soak_actors"]
        command += ["--processes", str(self.processes), "--log-level", "warning"]
        command += ["--shutdown-timeout", "10"]
        process = subprocess.Popen(
            command, cwd=self.directory, env=self.env(), stdout=log, stderr=subprocess.STDOUT
        )
        self.workers.append(process)
        return process

    def children(self) -> list[int]:
        """The worker processes now (children of the live supervisors)."""
        out = []
        for supervisor in self.live_workers():
            path = Path(f"/proc/{supervisor.pid}/task/{supervisor.pid}/children")
            with contextlib.suppress(OSError):
                out += [int(p) for p in path.read_text().split()]
        self.children_seen.update(out)
        return out

    def kill_orphans(self) -> None:
        """Worker processes run in sessions of their own: none may outlive the soak."""
        for pid in self.children_seen:
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"soak_actors" in cmdline:
                    os.kill(pid, signal.SIGKILL)


@dataclass
class Chaos:
    args: argparse.Namespace
    rng: random.Random
    run: SoakRun
    proxies: list[ProxyThread]
    admin: aqueue.RabbitmqBroker
    kinds: list[str] = field(default_factory=list)  # the kind of each fault of run.faults

    async def consuming(self, timeout: float) -> bool:
        async def ready() -> bool:
            info = await self.admin.queue_info(self.run.queue)
            return info is not None and info.consumers == self.run.processes

        return await wait_for_async(ready, timeout)

    def begin(self, kind: str, name: str) -> Fault:
        fault = Fault(name, time.time())
        self.run.faults.append(fault)
        self.kinds.append(kind)
        print(f"{fault.at - self.run.started:7.1f} s  {name}", flush=True)
        return fault

    async def restart(self) -> None:
        node = self.rng.choice(cluster.NODES)
        down = self.rng.uniform(2, 8)
        whole = self.rng.random() < 0.5
        what = "restart of the whole node" if whole else "stop_app/start_app of"
        fault = self.begin("restart", f"{what} {node.split('@')[0]}, {down:.0f} s down")
        restart = cluster.restart_whole_node if whole else cluster.restart_node
        try:
            await asyncio.to_thread(restart, node, down, fault.notes)
        finally:
            fault.ended = time.time()

    async def kill(self) -> None:
        children = self.run.children()
        if not children:
            return
        victim = self.rng.choice(children)
        fault = self.begin("kill", f"SIGKILL of worker process {victim}")
        fault.victim_pid = victim
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)

        def replaced() -> bool:
            fresh = [p for p in self.run.children() if p != victim and p not in children]
            if fresh:
                fault.replacement_pid = fresh[0]
            return bool(fresh)

        if await wait_for(replaced, 60):
            fault.ended = time.time()
            fault.notes["replacement process started"] = fault.ended
            pid = fault.replacement_pid
            if await wait_for(lambda: any(p == pid for _, _, p in self.run.records()), 30):
                first = min(t for _, t, p in self.run.records() if p == pid)
                fault.notes["replacement processed its first"] = first
        else:
            fault.ended = time.time()

    async def reset(self) -> None:
        if self.rng.random() < 0.5:
            fault = self.begin("reset", "reset of every connection")
            for proxy in self.proxies:
                proxy.reset()
        else:
            i = self.rng.randrange(len(self.proxies))
            fault = self.begin("reset", f"reset of every connection to {cluster.NODES[i]}")
            self.proxies[i].reset()
        fault.ended = time.time()
        if await self.consuming(60):
            fault.notes["both worker processes consuming"] = time.time()

    async def alarm(self) -> None:
        seconds = self.rng.uniform(3, 10)
        fault = self.begin("alarm", f"memory alarm on {cluster.ALARM_NODE} for {seconds:.0f} s")

        def hold() -> None:
            with cluster.memory_alarm(fault.notes):
                time.sleep(seconds)

        try:
            await asyncio.to_thread(hold)
        finally:
            fault.ended = fault.notes.get("alarm cleared", time.time())

    async def inject(self, deadline: float) -> None:
        weights = [float(w) for w in self.args.weights.split(",")]
        while True:
            pause = self.args.fault_every * self.rng.uniform(0.5, 1.5)
            if time.monotonic() + pause >= deadline:
                return
            await asyncio.sleep(pause)
            kind = self.rng.choices(KINDS, weights)[0]
            await getattr(self, kind)()


def consumption_stalls(run: Run, end: float) -> tuple[float, list[float]]:
    """The longest consumption stall of the run, and from each fault's start to the next
    one's (the last: to ``end``): the longest time a message in the queue (confirmed, not
    yet run) waited while no message at all was processed. Unlike the fault report's
    stall it leaves out sends that were held (an alarm blocks publishing, not consuming)."""
    records = run.records()
    first_done: dict[int, float] = {}
    for n, at, _ in records:
        first_done[n] = min(at, first_done.get(n, at))
    waiting = [(since, first_done.get(n, end)) for n, since in run.confirmed.items()]
    activity = sorted(at for _, at, _ in records)
    overall = longest_stall([(a, b) for a, b in waiting if b > a], activity)[0]
    out = []
    bounds = [f.at for f in run.faults] + [end]
    for lo, hi in itertools.pairwise(bounds):
        clipped = [(max(a, lo), min(b, hi)) for a, b in waiting if b > lo and a < hi and b > a]
        out.append(longest_stall(clipped, activity)[0])
    return overall, out


async def delete_queue(queue: str) -> None:
    for url in cluster.cluster_urls():
        try:
            connection = await aio_pika.connect(url, timeout=10)
        except Exception:
            continue
        async with connection, connection.channel() as channel:
            await channel.queue_delete(queue)
            await channel.queue_delete(queue + ".XQ")
        return


async def soak(args: argparse.Namespace, run: SoakRun) -> tuple[Figures, Chaos, int | None]:
    rng = random.Random(args.seed)
    proxies = [ProxyThread("127.0.0.1", port).start() for port in cluster.PORTS]
    query = {"heartbeat": str(args.heartbeat)}
    urls = [p.url(u, query) for p, u in zip(proxies, cluster.cluster_urls(), strict=True)]
    run.worker_env = {
        "AQUEUE_BROKER_URL": ",".join(urls),
        "SOAK_CONNECT_TIMEOUT": str(args.connect_timeout),
    }
    admin = aqueue.RabbitmqBroker(cluster.cluster_urls(), queue_type="quorum")
    producer = aqueue.RabbitmqBroker(
        urls,
        queue_type="quorum",
        publish_timeout=args.publish_timeout,
        connect_timeout=args.connect_timeout,
        reconnect_interval=0.5,
    )
    chaos = Chaos(args, rng, run, proxies, admin)
    supervisor: asyncio.Future[None] | None = None
    stop = asyncio.Event()
    sending: asyncio.Future[None] | None = None
    try:
        await admin.declare_queue(run.queue)
        run.live_set.add(run.start_worker())
        supervisor = asyncio.ensure_future(run.supervise())  # if the supervisor itself dies
        if not await chaos.consuming(90):
            raise SystemExit("the worker processes did not start consuming within 90 s")
        run.children()
        description = (
            f"{args.minutes:g} min at {args.rate:.0f} msg/s, 1 quorum queue, "
            f"--processes {run.processes}, a fault every {args.fault_every:.0f} s "
            f"(x0.5-1.5), weights {dict(zip(KINDS, args.weights.split(','), strict=True))}, "
            f"seed {args.seed}"
        )
        print(f"soak: {description} (records in {run.directory})", flush=True)
        sending = asyncio.ensure_future(produce(run, producer, args.rate, stop=stop))
        deadline = time.monotonic() + args.minutes * 60 - args.tail
        await asyncio.sleep(args.warmup)
        await chaos.inject(deadline)
        await asyncio.sleep(max(0.0, deadline - time.monotonic()) + args.tail)
        stop.set()
        await sending
        print(f"{time.time() - run.started:7.1f} s  sending stopped; draining", flush=True)
        drained = await drain(run, admin, args.drain_timeout)
        consumers: int | None = None
        if await chaos.consuming(30):
            consumers = run.processes
        else:
            info = await admin.queue_info(run.queue)
            consumers = None if info is None else info.consumers
        await asyncio.sleep(3)  # a second run of a message would show by now
        end = time.time()
        run.stop_workers()
        return await figures(run, admin, description, drained, end), chaos, consumers
    finally:
        stop.set()
        if sending is not None and not sending.done():
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending
        run.stopping = True
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        run.stop_workers()
        run.kill_orphans()
        with contextlib.suppress(Exception):
            await producer.close()
        with contextlib.suppress(Exception):
            await admin.close()
        for proxy in proxies:
            proxy.close()


def print_soak(run: SoakRun, chaos: Chaos, f: Figures, consumers: int | None) -> None:
    print_figures(run, f)
    ends = [t for _, t, _ in run.records()] + [x.ended or x.at for x in run.faults]
    overall, stalls = consumption_stalls(run, max(ends, default=time.time()))
    print(
        f"longest consumption stall {overall:.1f} s (a confirmed message waited in the queue, "
        "no message ran)"
    )
    print()
    print(f"{'fault':<52} {'at s':>7} {'lasted s':>8} {'stall s':>7}")
    by_kind: dict[str, list[float]] = defaultdict(list)
    for fault, kind, stall in zip(run.faults, chaos.kinds, stalls, strict=True):
        lasted = (fault.ended or fault.at) - fault.at
        at = fault.at - run.started
        print(f"{fault.name:<52} {at:>7.1f} {lasted:>8.1f} {stall:>7.1f}")
        by_kind[kind].append(stall)
    print()
    for kind in KINDS:
        values = by_kind.get(kind, [])
        if values:
            print(
                f"{kind:<8} {len(values):3d} faults, longest stall {max(values):5.1f} s, "
                f"median {sorted(values)[len(values) // 2]:5.1f} s"
            )
    print(
        f"consumers on the queue after draining: {consumers} "
        f"(expected {run.processes}, one per worker process)"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Durations in seconds unless said otherwise. See the module docstring.",
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="sending time (10)")
    parser.add_argument("--rate", type=float, default=100.0, help="messages per second (100)")
    parser.add_argument("--fault-every", type=float, default=15.0, help="mean pause (15)")
    parser.add_argument(
        "--weights",
        default="3,2,3,1.5",
        help="relative weights of restart,kill,reset,alarm (3,2,3,1.5)",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--processes", type=int, default=2, help="worker processes (2)")
    parser.add_argument("--warmup", type=float, default=10.0, help="before the first fault (10)")
    parser.add_argument("--tail", type=float, default=20.0, help="after the last fault (20)")
    parser.add_argument("--heartbeat", type=int, default=5)
    parser.add_argument("--connect-timeout", type=float, default=10.0)
    parser.add_argument("--publish-timeout", type=float, default=5.0)
    parser.add_argument("--drain-timeout", type=float, default=240.0)
    args = parser.parse_args()
    if len(args.weights.split(",")) != len(KINDS):
        parser.error(f"--weights: {len(KINDS)} numbers, for {','.join(KINDS)}")
    if args.seed is None:
        args.seed = random.randrange(10_000)
    return args


def main() -> int:
    args = parse_args()
    # The reconnection attempts of the producer during a fault are expected: not shown.
    for name in ("aiormq", "aio_pika", "aqueue"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    print("starting the cluster (scripts/cluster.sh start) ...", flush=True)
    cluster.start_cluster()
    watermark = cluster.watermark(cluster.ALARM_NODE)
    directory = Path(tempfile.mkdtemp(prefix="aqueue-soak-"))
    run = SoakRun("soak", directory, f"soak-{uuid.uuid4().hex[:8]}", processes=args.processes)
    try:
        result, chaos, consumers = asyncio.run(soak(args, run))
        print_soak(run, chaos, result, consumers)
    finally:
        # Whatever happened: the alarm node's watermark back, every node running, the
        # queues gone.
        cluster.restore_watermark(cluster.ALARM_NODE, watermark)
        cluster.ensure_running()
        asyncio.run(delete_queue(run.queue))
    if result.lost or not result.confirmed:
        print("\nFAILED: a confirmed message was lost (or none confirmed)")
        return 1
    if consumers != run.processes:
        print(f"\nFAILED: {consumers} consumers on the queue after draining, not {run.processes}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
