"""The fault report's machinery and its network scenarios.

A run: ``aqueue worker`` processes consume one queue of its own; their actors append what
they ran to a file of their process before they return (so before the ack): a message
recorded twice ran twice, a confirmed message never recorded (nor dead-lettered) is lost.
This process sends with ``send()`` (which waits for the broker's confirm) and counts.

The network scenarios put a :class:`~_fault_proxy.FaultProxy` between RabbitMQ and every
connection of the run (the producer's and the workers'); RabbitMQ itself is never touched.
Queues are declared, inspected and deleted on a direct connection.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
from _fault_proxy import ProxyThread
from yarl import URL

import aqueue

URL_DIRECT = os.environ.get("AQUEUE_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")

ACTORS = """
import asyncio
import os
import time

import aqueue

broker = aqueue.RabbitmqBroker(
    connect_timeout=float(os.environ.get("FAULT_CONNECT_TIMEOUT", "10")),
    reconnect_interval=float(os.environ.get("FAULT_RECONNECT_INTERVAL", "1")),
)
_out = open(
    os.path.join(os.environ["FAULT_OUT"], f"processed-{os.getpid()}.txt"), "a", buffering=1
)
_WORK_SECONDS = float(os.environ.get("FAULT_WORK_SECONDS", "4"))


def _note(event: str, n: int) -> None:
    _out.write(f"{event} {n} {time.time():.6f} {os.getpid()}\\n")  # one write(2) per line


@aqueue.actor(broker=broker, queue_name=os.environ["FAULT_QUEUE"], concurrency=50)
async def record(n: int) -> None:
    await asyncio.sleep(0.001)  # a little work
    _note("done", n)


@aqueue.actor(broker=broker, queue_name=os.environ["FAULT_QUEUE"], concurrency=50)
async def work(n: int) -> None:
    # A healthy message that takes a while (the flapping scenario).
    _note("start", n)
    try:
        await asyncio.sleep(_WORK_SECONDS)
    except asyncio.CancelledError:
        _note("cancelled", n)
        raise
    _note("done", n)
"""


@dataclass
class Fault:
    name: str
    at: float  # when it began (time.time())
    ended: float | None = None  # when the path was healthy again
    notes: dict[str, float] = field(default_factory=dict)  # what came back, and when
    victim_pid: int | None = None
    replacement_pid: int | None = None


@dataclass
class Event:
    kind: str  # "done", and for the work actor also "start" and "cancelled"
    n: int
    at: float
    pid: int


@dataclass
class Run:
    scenario: str
    directory: Path
    queue: str
    worker_env: dict[str, str] = field(default_factory=dict)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    confirmed: dict[int, float] = field(default_factory=dict)  # message -> confirmed at
    send_began: dict[int, float] = field(default_factory=dict)  # message -> send() called at
    failures: list[tuple[float, int, str]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    exits: list[tuple[float, int, int]] = field(default_factory=list)  # at, pid, code
    live_set: set[subprocess.Popen[bytes]] = field(default_factory=set)  # supervised
    started: float = field(default_factory=time.time)
    sent: int = 0
    stopping: bool = False

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "AQUEUE_BROKER_URL": URL_DIRECT,
            **self.worker_env,
            "FAULT_QUEUE": self.queue,
            "FAULT_OUT": str(self.directory),
            # The actors' module, then what the caller set (e.g. a checkout to measure).
            "PYTHONPATH": os.pathsep.join(
                [str(self.directory), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
        }

    def start_worker(self) -> subprocess.Popen[bytes]:
        (self.directory / "fault_actors.py").write_text(textwrap.dedent(ACTORS))
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

    def live_workers(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.workers if p.poll() is None]

    def events(self) -> list[Event]:
        """Everything the actors wrote, in no particular order."""
        out = []
        for path in self.directory.glob("processed-*.txt"):
            for line in path.read_text().splitlines():
                parts = line.split()
                if len(parts) == 4:  # a line cut by SIGKILL would be shorter
                    out.append(Event(parts[0], int(parts[1]), float(parts[2]), int(parts[3])))
        return out

    def records(self) -> list[tuple[int, float, int]]:
        """(message number, when processed, worker pid) of every completed run."""
        return [(e.n, e.at, e.pid) for e in self.events() if e.kind == "done"]

    async def supervise(self) -> None:
        """Start a worker that exited again a second later, as a process manager would."""
        while not self.stopping:
            for process in list(self.workers):
                code = process.poll()
                if code is not None and process in self.live_set:
                    self.live_set.discard(process)
                    self.exits.append((time.time(), process.pid, code))
                    await asyncio.sleep(1.0)
                    if not self.stopping:
                        self.live_set.add(self.start_worker())
            await asyncio.sleep(0.2)

    def stop_workers(self) -> None:
        self.stopping = True
        for process in self.workers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(40)
        for process in self.workers:
            if process.poll() is None:
                process.kill()
                process.wait()

    def log_counts(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for path in self.directory.glob("worker-*.log"):
            for line in path.read_text(errors="replace").splitlines():
                for word in ("WARNING", "ERROR", "CRITICAL", "Traceback"):
                    if word in line:
                        counts[word] += 1
        return counts


def _placeholder(n: int) -> None: ...


def sender(broker: aqueue.RabbitmqBroker, queue: str, actor_name: str) -> aqueue.Actor[[int], None]:
    return broker.actor(actor_name=actor_name, queue_name=queue)(_placeholder)


async def send_one(run: Run, actor: aqueue.Actor[[int], None], n: int) -> None:
    run.send_began[n] = time.time()
    try:
        await actor.send(n)
    except aqueue.BrokerConnectionError as exc:
        run.failures.append((time.time(), n, str(exc)))
    else:
        run.confirmed[n] = time.time()


async def produce(
    run: Run,
    broker: aqueue.RabbitmqBroker,
    rate: float,
    *,
    total: int | None = None,
    stop: asyncio.Event | None = None,
    in_flight_limit: int = 2000,
) -> None:
    """Send 0, 1, 2, ... at a steady rate, whatever happens to the network (like requests
    arriving at a web app), until ``total`` were sent or ``stop`` is set; then wait for
    the sends in flight."""
    record = sender(broker, run.queue, "record")
    started = time.monotonic()
    in_flight: set[asyncio.Task[None]] = set()
    limit = asyncio.Semaphore(in_flight_limit)

    async def send(n: int) -> None:
        try:
            await send_one(run, record, n)
        finally:
            limit.release()

    for n in itertools.count():
        if (total is not None and n >= total) or (stop is not None and stop.is_set()):
            break
        await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
        await limit.acquire()
        task = asyncio.ensure_future(send(n))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        run.sent += 1
    await asyncio.gather(*in_flight)


async def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def wait_for_async(condition: Callable[[], Awaitable[bool]], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await condition():
                return True
        except aqueue.BrokerConnectionError:
            pass
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)


async def consumers(admin: aqueue.RabbitmqBroker, queue: str) -> int:
    info = await admin.queue_info(queue)
    return 0 if info is None else info.consumers


async def dead_lettered(admin: aqueue.RabbitmqBroker, queue: str) -> tuple[set[int], Counter[str]]:
    """Message numbers in ``<queue>.XQ``, and the reasons (``x-aqueue-reason``)."""
    letters = await admin.dead_letters(queue, limit=100_000)
    numbers: set[int] = set()
    reasons: Counter[str] = Counter()
    for letter in letters:
        reasons[letter.reason or "?"] += 1
        message = letter.message
        if message is not None and message.args:
            numbers.add(int(message.args[0]))
    return numbers, reasons


async def drain(run: Run, admin: aqueue.RabbitmqBroker, timeout: float) -> bool:
    """Wait until every confirmed message ran, or is in the dead-letter queue."""
    deadline = time.monotonic() + timeout
    while True:
        missing = set(run.confirmed) - {n for n, _, _ in run.records()}
        if not missing:
            return True
        with contextlib.suppress(aqueue.BrokerConnectionError):
            info = await admin.queue_info(run.queue)
            dead = await admin.ready_count(run.queue + ".XQ")
            if info is not None and info.ready == 0 and dead >= len(missing):
                numbers, _ = await dead_lettered(admin, run.queue)
                if missing <= numbers:
                    return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.5)


async def delete_queues(queue: str) -> None:
    connection = await aio_pika.connect(URL_DIRECT)
    async with connection, connection.channel() as channel:
        await channel.queue_delete(queue)
        await channel.queue_delete(queue + ".XQ")


# -- figures ----------------------------------------------------------------------------


@dataclass
class Figures:
    scenario: str
    description: str
    sent: int
    confirmed: int
    send_failures: int
    processed: int  # unique messages that completed at least once
    duplicated: int  # messages that completed more than once
    extra_runs: int  # completed runs beyond the first, over all messages
    duplicated_in_one_process: int  # completed more than once by the same worker process
    lost: int  # confirmed, never completed, not dead-lettered
    dead_lettered: int
    dead_letter_reasons: dict[str, int]
    unconfirmed_ran: int  # a failed send that reached the queue after all
    longest_stall: float
    stall_began: float | None  # seconds after the first fault began
    recovered_after: float | None  # backlog cleared, seconds after the last fault ended
    drained: bool
    runs_started: int | None = None  # the work actor only
    cut_short: int | None = None
    started_twice: int | None = None
    worker_exits: int = 0
    lost_numbers: list[int] = field(default_factory=list)


def longest_stall(waiting: list[tuple[float, float]], activity: list[float]) -> tuple[float, float]:
    """The longest time during which a message was waiting and no actor started or
    completed a run, and when it began.

    ``waiting``: (from, to) of each message: from its ``send()`` call to the first start
    of its run (else its first completion; for a failed send that never ran, the failure;
    for a message never run, the end of the run). ``activity``: when runs started or
    completed, sorted.
    """
    best, began = 0.0, 0.0
    merged: list[list[float]] = []
    for start, stop in sorted(waiting):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    for start, stop in merged:
        lo, hi = bisect.bisect_right(activity, start), bisect.bisect_left(activity, stop)
        points = [start, *activity[lo:hi], stop]
        for a, b in itertools.pairwise(points):
            if b - a > best:
                best, began = b - a, a
    return best, began


async def figures(
    run: Run, admin: aqueue.RabbitmqBroker, description: str, drained: bool, end: float
) -> Figures:
    events = run.events()
    done = [e for e in events if e.kind == "done"]
    completions = Counter(e.n for e in done)
    per_process = Counter((e.n, e.pid) for e in done)
    first_done: dict[int, float] = {}
    for e in done:
        first_done[e.n] = min(e.at, first_done.get(e.n, e.at))
    numbers, reasons = await dead_lettered(admin, run.queue)
    never_ran = set(run.confirmed) - set(completions)
    lost = never_ran - numbers
    first_start: dict[int, float] = {}
    for e in events:
        if e.kind == "start":
            first_start[e.n] = min(e.at, first_start.get(e.n, e.at))
    failed_at = {n: t for t, n, _ in run.failures}
    waiting = []
    for n, since in run.send_began.items():
        until = first_start.get(n, first_done.get(n))
        if until is None:
            if n in numbers:
                continue  # dead-lettered: when is not known
            until = failed_at.get(n, end)
        waiting.append((since, until))
    stall, began = longest_stall(
        waiting, sorted(e.at for e in events if e.kind in ("start", "done"))
    )
    last_ended = max((f.ended for f in run.faults if f.ended is not None), default=None)
    recovered: float | None = None
    if last_ended is not None and not lost:
        before = [
            first_done[n] for n, t in run.confirmed.items() if t <= last_ended and n in first_done
        ]
        fresh = [
            first_done[n] for n, t in run.confirmed.items() if t > last_ended and n in first_done
        ]
        # Recovered: the backlog of the fault cleared, and a message sent after it ran.
        recovered = max([0.0, *(t - last_ended for t in before)])
        if fresh:
            recovered = max(recovered, min(fresh) - last_ended)
    starts = [e for e in events if e.kind == "start"]
    started = Counter(e.n for e in starts)
    first_fault = run.faults[0].at if run.faults else run.started
    return Figures(
        scenario=run.scenario,
        description=description,
        sent=run.sent,
        confirmed=len(run.confirmed),
        send_failures=len(run.failures),
        processed=len(completions),
        duplicated=sum(1 for c in completions.values() if c > 1),
        extra_runs=sum(c - 1 for c in completions.values()),
        duplicated_in_one_process=len({n for (n, _), c in per_process.items() if c > 1}),
        lost=len(lost),
        dead_lettered=len(numbers),
        dead_letter_reasons=dict(reasons),
        unconfirmed_ran=len((set(range(run.sent)) - set(run.confirmed)) & set(completions)),
        longest_stall=stall,
        stall_began=max(0.0, began - first_fault) if stall else None,
        recovered_after=recovered,
        drained=drained,
        runs_started=len(starts) if starts else None,
        cut_short=len(starts) - len(done) if starts else None,
        started_twice=sum(1 for c in started.values() if c > 1) if starts else None,
        worker_exits=len(run.exits),
        lost_numbers=sorted(lost)[:50],
    )


def print_figures(run: Run, f: Figures) -> None:
    print()
    print(f"== {f.scenario}: {f.description}")
    print(f"sent                {f.sent:8d}")
    print(f"confirmed           {f.confirmed:8d}")
    print(f"send failures       {f.send_failures:8d}   (BrokerConnectionError, not retried)")
    print(f"processed           {f.processed:8d}   (messages that completed at least once)")
    print(
        f"duplicated          {f.duplicated:8d}   (completed more than once; "
        f"{f.extra_runs} extra runs)"
    )
    print(f"  in one process    {f.duplicated_in_one_process:8d}   (twice by one worker)")
    print(f"lost                {f.lost:8d}   (confirmed, never completed nor dead-lettered)")
    reasons = ", ".join(f"{r}: {c}" for r, c in sorted(f.dead_letter_reasons.items()))
    print(f"dead-lettered       {f.dead_lettered:8d}   {f'({reasons})' if reasons else ''}")
    print(f"unconfirmed, ran    {f.unconfirmed_ran:8d}   (a failed send that was queued after all)")
    if f.runs_started is not None:
        print(f"runs started        {f.runs_started:8d}")
        print(f"runs cut short      {f.cut_short:8d}   (started, never completed)")
        print(f"started twice       {f.started_twice:8d}   (messages whose run began again)")
    began = "" if f.stall_began is None else f", from {f.stall_began:.1f} s after the fault began"
    print(
        f"longest stall       {f.longest_stall:8.1f} s "
        f"(messages waited, no run started or completed{began})"
    )
    if f.recovered_after is not None:
        print(
            f"recovered after     {f.recovered_after:8.1f} s "
            "(after the fault ended: its backlog cleared, a message sent after it ran)"
        )
    if f.worker_exits:
        print(f"worker exits        {f.worker_exits:8d}   (restarted a second later)")
    if not f.drained:
        print("drain timed out: not every confirmed message was processed in time")
    events = [e for e in run.events() if e.kind == "done"]
    for i, fault in enumerate(run.faults):
        print(f"{fault.name}, {fault.at - run.faults[0].at:.1f} s after the first fault:")
        if fault.ended is not None:
            print(f"  {'fault ended':<44} {fault.ended - fault.at:6.2f} s after it began")
        for what, when in fault.notes.items():
            print(f"  {what:<44} {when - fault.at:6.2f} s after it began")
        end = fault.ended if fault.ended is not None else fault.at
        after = [t for t in run.confirmed.values() if t > end]
        if after:
            print(f"  {'first send confirmed after it':<44} {min(after) - fault.at:6.2f} s")
        fresh = {n for n, t in run.confirmed.items() if t > end}
        processed = [e.at for e in events if e.n in fresh]
        if processed:
            print(
                f"  {'first message sent after it processed':<44} "
                f"{min(processed) - fault.at:6.2f} s"
            )
        until = run.faults[i + 1].at if i + 1 < len(run.faults) else end + 30
        failed = [t for t, _, _ in run.failures if fault.at <= t <= min(until, end + 30)]
        print(f"  {'send failures from it to 30 s after its end':<44} {len(failed):6d}")
    for at, pid, code in run.exits:
        print(f"worker {pid} exited with code {code} {at - run.started:.1f} s into the run")
    logs = run.log_counts()
    print(
        "worker logs: "
        + ", ".join(f"{logs[w]} {w}" for w in ("WARNING", "ERROR", "CRITICAL", "Traceback"))
        + f"  ({run.directory})"
    )
    if run.failures:
        print(f"first send failure: {run.failures[0][2]}")
    if f.lost_numbers:
        print(f"LOST: {f.lost_numbers}")


def print_summary(all_figures: list[Figures]) -> None:
    print()
    header = (
        f"{'scenario':<10} {'sent':>7} {'confirmed':>9} {'failed':>6} {'processed':>9} "
        f"{'dup':>4} {'lost':>4} {'DLQ':>4} {'cut':>4} {'stall s':>7} {'recover s':>9}"
    )
    print(header)
    print("-" * len(header))
    for f in all_figures:
        recover = "-" if f.recovered_after is None else f"{f.recovered_after:.1f}"
        cut = "-" if f.cut_short is None else str(f.cut_short)
        print(
            f"{f.scenario:<10} {f.sent:>7} {f.confirmed:>9} {f.send_failures:>6} "
            f"{f.processed:>9} {f.duplicated:>4} {f.lost:>4} {f.dead_lettered:>4} {cut:>4} "
            f"{f.longest_stall:>7.1f} {recover:>9}"
        )


# -- the network scenarios ----------------------------------------------------------------


@dataclass
class Settings:
    """Durations and sizes of the network scenarios (see ``fault_report.py --help``)."""

    workers: int
    rate: float
    heartbeat: int
    connect_timeout: float
    publish_timeout: float
    warmup: float
    tail: float
    drain_timeout: float
    blackhole_for: float
    churn_for: float
    churn_every: float
    handshake_for: float
    flap_for: float
    flap_every: float
    flap_messages: int
    flap_work: float

    @classmethod
    def of(cls, args: argparse.Namespace) -> Settings:
        quick = args.quick

        def pick(value: float | None, full: float, short: float) -> float:
            return value if value is not None else (short if quick else full)

        return cls(
            workers=args.workers,
            rate=pick(args.rate, 300.0, 200.0),
            heartbeat=int(pick(args.heartbeat, 5, 2)),
            connect_timeout=args.connect_timeout,
            publish_timeout=args.publish_timeout,
            warmup=pick(None, 5.0, 2.0),
            tail=pick(args.tail, 15.0, 12.0),
            drain_timeout=args.drain_timeout,
            blackhole_for=pick(args.blackhole_for, 20.0, 12.0),
            churn_for=pick(args.churn_for, 30.0, 10.0),
            churn_every=pick(args.churn_every, 2.0, 2.0),
            handshake_for=pick(args.handshake_for, 20.0, 6.0),
            flap_for=pick(args.flap_for, 60.0, 10.0),
            flap_every=pick(args.flap_every, 3.0, 1.5),
            flap_messages=int(pick(args.flap_messages, 40, 20)),
            flap_work=pick(args.flap_work, 4.0, 2.0),
        )


@dataclass
class Context:
    settings: Settings
    run: Run
    proxy: ProxyThread
    admin: aqueue.RabbitmqBroker  # straight to RabbitMQ: queues, consumers, dead letters
    producer: aqueue.RabbitmqBroker  # through the proxy


async def all_consuming(c: Context, timeout: float) -> bool:
    async def ready() -> bool:
        return await consumers(c.admin, c.run.queue) >= c.settings.workers

    return await wait_for_async(ready, timeout)


def start_workers(c: Context) -> None:
    for _ in range(c.settings.workers):
        c.run.live_set.add(c.run.start_worker())


async def note_when_consuming(c: Context, fault: Fault) -> None:
    if await all_consuming(c, 300):
        fault.notes["every worker consuming again"] = time.time()


async def steady_traffic(c: Context, fault: Callable[[], Awaitable[None]]) -> None:
    """Send at a steady rate: ``warmup`` s, then the fault, then ``tail`` s."""
    stop = asyncio.Event()
    producer = asyncio.ensure_future(produce(c.run, c.producer, c.settings.rate, stop=stop))
    try:
        await asyncio.sleep(c.settings.warmup)
        await fault()
        await asyncio.sleep(c.settings.tail)
    finally:
        stop.set()
        await producer


async def reset_every(c: Context, fault: Fault, every: float, duration: float) -> int:
    """Reset every connection every ``every`` s for ``duration`` s; the fault ends with the
    last reset."""
    resets = max(1, round(duration / every))
    for i in range(1, resets + 1):
        await asyncio.sleep(max(0.0, fault.at + i * every - time.time()))
        c.proxy.reset()
    fault.ended = time.time()
    return resets


async def blackhole(c: Context) -> str:
    s = c.settings
    start_workers(c)
    if not await all_consuming(c, 60):
        raise SystemExit("the workers did not start consuming within 60 s")

    async def fault() -> None:
        f = Fault(f"blackhole of {s.blackhole_for:.0f} s", time.time())
        c.run.faults.append(f)
        c.proxy.proxy.blackholed = True
        await asyncio.sleep(s.blackhole_for)
        c.proxy.proxy.blackholed = False
        f.ended = time.time()

    await steady_traffic(c, fault)
    return (
        f"every byte swallowed both ways for {s.blackhole_for:.0f} s, connections open; "
        f"heartbeat {s.heartbeat} s, {s.rate:.0f} msg/s"
    )


async def churn(c: Context) -> str:
    s = c.settings
    start_workers(c)
    if not await all_consuming(c, 60):
        raise SystemExit("the workers did not start consuming within 60 s")

    async def fault() -> None:
        f = Fault(f"churn for {s.churn_for:.0f} s", time.time())
        c.run.faults.append(f)
        resets = await reset_every(c, f, s.churn_every, s.churn_for)
        f.notes[f"{resets} resets; the last one"] = f.ended or f.at

    await steady_traffic(c, fault)
    return (
        f"every connection reset every {s.churn_every:.1f} s for {s.churn_for:.0f} s, "
        f"{s.rate:.0f} msg/s"
    )


async def handshake(c: Context) -> str:
    s = c.settings
    stop = asyncio.Event()
    proxy = c.proxy.proxy
    # 1. Start-up: the workers and the producer start while the proxy accepts TCP and
    # never answers.
    first = Fault(f"silent handshake at start-up, {s.handshake_for:.0f} s", time.time())
    c.run.faults.append(first)
    proxy.silent = True
    start_workers(c)
    producer = asyncio.ensure_future(produce(c.run, c.producer, s.rate, stop=stop))
    try:
        await asyncio.sleep(s.handshake_for)
        proxy.silent = False
        first.ended = time.time()
        if await all_consuming(c, 300):
            first.notes["every worker consuming"] = time.time()
        await asyncio.sleep(s.warmup)
        # 2. Reconnect: every connection is reset while new ones get no answer.
        second = Fault(f"silent handshake at reconnect, {s.handshake_for:.0f} s", time.time())
        c.run.faults.append(second)
        proxy.silent = True
        c.proxy.reset()
        await asyncio.sleep(s.handshake_for)
        proxy.silent = False
        second.ended = time.time()
        watch = asyncio.ensure_future(note_when_consuming(c, second))
        await asyncio.sleep(s.tail)
        if not watch.done():
            await asyncio.wait_for(watch, 300)
    finally:
        stop.set()
        await producer
    return (
        f"TCP accepted, handshake never answered for {s.handshake_for:.0f} s at start-up, "
        f"then again at reconnect; connect_timeout {s.connect_timeout:.0f} s, "
        f"{s.rate:.0f} msg/s"
    )


async def flapping(c: Context) -> str:
    s = c.settings
    start_workers(c)
    if not await all_consuming(c, 60):
        raise SystemExit("the workers did not start consuming within 60 s")
    work = sender(c.producer, c.run.queue, "work")
    c.run.sent = s.flap_messages
    await asyncio.gather(*(send_one(c.run, work, n) for n in range(s.flap_messages)))
    f = Fault(f"flapping for {s.flap_for:.0f} s", time.time())
    c.run.faults.append(f)
    resets = await reset_every(c, f, s.flap_every, s.flap_for)
    f.notes[f"{resets} resets; the last one"] = f.ended or f.at
    return (
        f"{s.flap_messages} healthy messages of {s.flap_work:.0f} s each, every connection "
        f"reset every {s.flap_every:.1f} s for {s.flap_for:.0f} s"
    )


NETWORK_SCENARIOS: dict[str, Callable[[Context], Awaitable[str]]] = {
    "blackhole": blackhole,
    "churn": churn,
    "handshake": handshake,
    "flapping": flapping,
}


async def network_scenario(name: str, settings: Settings, run: Run) -> Figures:
    target = URL(URL_DIRECT)
    proxy = ProxyThread(target.host or "127.0.0.1", target.port or 5672).start()
    url = proxy.url(URL_DIRECT, {"heartbeat": str(settings.heartbeat)})
    run.worker_env = {
        "AQUEUE_BROKER_URL": url,
        "FAULT_CONNECT_TIMEOUT": str(settings.connect_timeout),
        "FAULT_RECONNECT_INTERVAL": "0.5",
        "FAULT_WORK_SECONDS": str(settings.flap_work),
    }
    admin = aqueue.RabbitmqBroker(URL_DIRECT)
    producer = aqueue.RabbitmqBroker(
        url,
        publish_timeout=settings.publish_timeout,
        connect_timeout=settings.connect_timeout,
        reconnect_interval=0.5,
    )
    context = Context(settings, run, proxy, admin, producer)
    supervisor: asyncio.Future[None] | None = None
    try:
        await admin.declare_queue(run.queue)
        supervisor = asyncio.ensure_future(run.supervise())
        description = await NETWORK_SCENARIOS[name](context)
        drained = await drain(run, admin, settings.drain_timeout)
        # A second run of a message would show within a moment (a work run takes longer).
        await asyncio.sleep(max(3.0, 2 * settings.flap_work if name == "flapping" else 0))
        end = time.time()
        run.stop_workers()
        return await figures(run, admin, description, drained, end)
    finally:
        run.stopping = True
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        run.stop_workers()
        with contextlib.suppress(Exception):
            await producer.close()
        await admin.close()
        proxy.close()
