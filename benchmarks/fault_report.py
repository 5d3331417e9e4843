"""A fault report: messages sent through network faults, broker restarts and killed
workers; what was lost, run twice, dead-lettered, and how long work stalled.

Run it from the repository root::

    python benchmarks/fault_report.py                      # every network scenario
    python benchmarks/fault_report.py --scenario churn --quick
    python benchmarks/fault_report.py --scenario restart   # restarts RabbitMQ: see below

In every scenario, ``aqueue worker`` processes (``--workers``, from the command line)
consume a queue of the run's own. Their actors append each message's number to a file of
their process before they return, so before the ack: a message recorded twice ran twice,
a confirmed message never recorded (and not in the dead-letter queue) is lost. This
script sends with ``send()``, which waits for the broker's confirm; a send that raises
``BrokerConnectionError`` (no confirm within ``--publish-timeout``) is a *send failure*,
not counted as confirmed and not retried. After the faults it waits until every confirmed
message ran or was dead-lettered (or ``--drain-timeout`` passes), stops the workers with
SIGTERM and counts. A worker that exits is started again a second later, as a process
manager would (network scenarios).

The network scenarios put a TCP proxy (``benchmarks/_fault_proxy.py``) between RabbitMQ
and every connection of the run, the producer's and the workers'; RabbitMQ itself is not
touched, so they are safe on a shared RabbitMQ:

``blackhole``
    For ``--blackhole-for`` s (20) every byte is swallowed both ways and connections stay
    open, as in a partition (no reset gets through either): the connections' heartbeats
    (``--heartbeat``, in the URL) must notice, and everything must recover when the path
    heals. aiormq gives up on a connection after 3 x (heartbeat + 1) s without a frame,
    18 s for a heartbeat of 5; RabbitMQ after about 2 heartbeats. Sending goes on at
    ``--rate``.
``churn``
    Every connection is reset every ``--churn-every`` s (2) for ``--churn-for`` s (30)
    while sending at a steady rate.
``handshake``
    The proxy accepts TCP and never answers, for ``--handshake-for`` s (20): first while
    the workers and the producer start, then (after a healthy pause) while they reconnect
    from a reset. Start-up and reconnects must not wedge (``--connect-timeout``).
``flapping``
    ``--flap-messages`` (40) healthy messages whose actor runs ``--flap-work`` s (4) each;
    every connection is reset every ``--flap-every`` s (3) for ``--flap-for`` s (60). It
    counts the runs cut short, the messages that began or completed twice and those that
    ended in the dead-letter queue ``<queue>.XQ`` (by their ``x-aqueue-reason``).

``all`` (the default) runs the four in turn. ``--quick`` shortens each (seconds, not
minutes; a heartbeat of 2 s); the options above override it.

``restart`` is the original scenario, and it is not part of ``all``: it runs
``rabbitmqctl stop_app`` and ``start_app``, so it needs rabbitmqctl and the rights to use
it; do not run it against a RabbitMQ that others use. Two workers consume; 20,000
messages are sent at ``--rate`` (1,000/s); at a quarter of them one worker gets SIGKILL
and is started again a second later; at half of them RabbitMQ is stopped for
``--down-for`` s and started again. RabbitMQ is always started again at the end.

For each scenario it prints sent, confirmed, send failures, processed, duplicated (ran
more than once), lost (confirmed, never processed nor dead-lettered), dead-lettered, the
longest stall (the longest time a confirmed message waited while nothing at all was
processed) and the time to recover once the fault ended (its backlog cleared and a
message sent after it ran); and for each fault when things worked again. It exits 1 if a
confirmed message was lost. The queues are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _fault_scenarios import (
    NETWORK_SCENARIOS,
    URL_DIRECT,
    Fault,
    Figures,
    Run,
    Settings,
    delete_queues,
    drain,
    figures,
    network_scenario,
    print_figures,
    print_summary,
    produce,
    wait_for,
    wait_for_async,
)

import aqueue

# -- restart: RabbitMQ stopped and started, a worker killed --------------------------------


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


async def kill_a_worker(run: Run, restart_after: float) -> None:
    victim = run.workers[0]
    fault = Fault("SIGKILL of a worker", time.time(), victim_pid=victim.pid)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    run.faults.append(fault)
    await asyncio.sleep(restart_after)
    replacement = run.start_worker()
    fault.ended = time.time()
    fault.notes["replacement worker started"] = fault.ended
    fault.replacement_pid = replacement.pid
    if await wait_for(lambda: any(p == replacement.pid for _, _, p in run.records()), 60):
        first = min(t for _, t, p in run.records() if p == replacement.pid)
        fault.notes["replacement worker processed its first"] = first


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
    fault.ended = time.time()
    fault.notes["RabbitMQ back"] = fault.ended


async def restart_scenario(args: argparse.Namespace, run: Run) -> Figures:
    rate = args.rate or 1000.0
    broker = aqueue.RabbitmqBroker(
        URL_DIRECT, publish_timeout=args.publish_timeout, reconnect_interval=0.5
    )
    try:
        await broker.declare_queue(run.queue)
        for _ in range(args.workers):
            run.start_worker()

        async def all_consuming() -> bool:
            info = await broker.queue_info(run.queue)
            return info is not None and info.consumers == args.workers

        if not await wait_for_async(all_consuming, 60):
            raise SystemExit("the workers did not start consuming within 60 s")
        description = (
            f"{args.messages} messages at {rate:.0f}/s to {args.workers} workers; SIGKILL at "
            f"{args.messages // 4}, RabbitMQ down for {args.down_for:.0f} s at "
            f"{args.messages // 2}"
        )
        print(f"restart: {description}", flush=True)
        producer = asyncio.ensure_future(
            produce(run, broker, rate, total=args.messages, in_flight_limit=200)
        )
        await wait_for(lambda: run.sent >= args.messages // 4, 600)
        await kill_a_worker(run, restart_after=1.0)
        await wait_for(lambda: run.sent >= args.messages // 2, 600)
        await asyncio.to_thread(restart_rabbitmq, run, args.down_for)
        await producer
        drained = await drain(run, broker, args.drain_timeout)
        end = time.time()
        run.stop_workers()
        return await figures(run, broker, description, drained, end)
    finally:
        run.stop_workers()
        await broker.close()


# -- main -------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Durations in seconds. See the module docstring for what each scenario does.",
    )
    parser.add_argument(
        "--scenario",
        choices=["all", *NETWORK_SCENARIOS, "restart"],
        default="all",
        help="all: every network scenario in turn (default); restart stops RabbitMQ",
    )
    parser.add_argument("--quick", action="store_true", help="short faults: a quick check")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    parser.add_argument(
        "--rate", type=float, help="messages sent per second (300; quick 200; restart 1000)"
    )
    parser.add_argument("--publish-timeout", type=float, default=3.0)
    parser.add_argument("--drain-timeout", type=float, default=180.0)
    network = parser.add_argument_group("network scenarios")
    network.add_argument("--heartbeat", type=int, help="heartbeat in the URL (5; quick 2)")
    network.add_argument("--connect-timeout", type=float, default=10.0)
    network.add_argument("--tail", type=float, help="sending after the fault (15; quick 12)")
    network.add_argument("--blackhole-for", type=float, help="(20; quick 12)")
    network.add_argument("--churn-for", type=float, help="(30; quick 10)")
    network.add_argument("--churn-every", type=float, help="(2)")
    network.add_argument("--handshake-for", type=float, help="(20; quick 6)")
    network.add_argument("--flap-for", type=float, help="(60; quick 10)")
    network.add_argument("--flap-every", type=float, help="(3; quick 1.5)")
    network.add_argument("--flap-messages", type=int, help="(40; quick 20)")
    network.add_argument("--flap-work", type=float, help="seconds each runs (4; quick 2)")
    restart = parser.add_argument_group("restart scenario")
    restart.add_argument("--messages", type=int, default=20_000)
    restart.add_argument("--down-for", type=float, default=5.0, help="seconds RabbitMQ is down (5)")
    return parser.parse_args()


def new_run(scenario: str) -> Run:
    directory = Path(tempfile.mkdtemp(prefix=f"aqueue-faults-{scenario}-"))
    return Run(scenario, directory, f"faults-{scenario}-{uuid.uuid4().hex[:8]}")


def main() -> int:
    args = parse_args()
    # The reconnection attempts of the producer during a fault are expected: not shown.
    for name in ("aiormq", "aio_pika", "aqueue"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    results: list[Figures] = []
    if args.scenario == "restart":
        run = new_run("restart")
        try:
            results.append(asyncio.run(restart_scenario(args, run)))
            print_figures(run, results[-1])
        finally:
            # Whatever happened: RabbitMQ running, the queues gone.
            rabbitmqctl("start_app")
            rabbitmqctl("await_startup")
            asyncio.run(delete_queues(run.queue))
    else:
        settings = Settings.of(args)
        names = list(NETWORK_SCENARIOS) if args.scenario == "all" else [args.scenario]
        for name in names:
            run = new_run(name)
            print(f"{name}: running (records in {run.directory})", flush=True)
            try:
                results.append(asyncio.run(network_scenario(name, settings, run)))
                print_figures(run, results[-1])
            finally:
                asyncio.run(delete_queues(run.queue))
            print(flush=True)
        if len(results) > 1:
            print_summary(results)
    failed = [f.scenario for f in results if f.lost or not f.confirmed]
    if failed:
        print(f"\nFAILED: a confirmed message lost (or none confirmed) in {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
