"""The ``aqueue`` command line.

Exit codes: 0 success (including a graceful stop on SIGTERM or SIGINT), 1 a runtime
error (for example the broker cannot be reached), 2 a usage error (bad options,
modules that cannot be imported, no actors).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import click

from . import __version__
from ._loading import LoadError, load_broker
from ._url import redact_url
from .errors import BrokerConnectionError, WorkerError
from .worker import Worker

log = logging.getLogger("aqueue.cli")

EXIT_RUNTIME_ERROR = 1
EXIT_USAGE_ERROR = 2
SUPERVISED_ENV = "AQUEUE_WORKER_INDEX"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="aqueue")
def main() -> None:
    """aqueue: an asyncio-native task queue for RabbitMQ."""


@main.command()
@click.argument("modules", nargs=-1, required=True, metavar="MODULE[:BROKER] [MODULE ...]")
@click.option(
    "-Q",
    "--queues",
    multiple=True,
    help="Queue to consume (repeat or separate with commas); default: all with actors.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Default number of messages of one async actor that run at once.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Threads for blocking (def) actors, per process.",
)
@click.option(
    "-p",
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes, each with its own single connection.",
)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds running messages get to finish on SIGTERM/SIGINT before they are requeued.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
)
def worker(
    modules: tuple[str, ...],
    queues: tuple[str, ...],
    concurrency: int,
    threads: int,
    processes: int,
    shutdown_timeout: float,
    log_level: str,
) -> None:
    """Run a worker for the actors declared in MODULE(s).

    The broker is MODULE:BROKER when given, else the first module's `broker`
    attribute, else the default broker (AQUEUE_BROKER_URL or the local RabbitMQ).
    SIGTERM or SIGINT stops gracefully; a second SIGINT stops at once.
    """
    _configure_logging(log_level)
    if processes > 1:
        sys.exit(_supervise(processes, shutdown_timeout))
    queue_names = [q.strip() for item in queues for q in item.split(",") if q.strip()]
    try:
        broker = load_broker(list(modules))
        work = Worker(
            broker,
            queues=queue_names or None,
            concurrency=concurrency,
            threads=threads,
            shutdown_timeout=shutdown_timeout,
        )
        work.plan()
    except (LoadError, WorkerError, ValueError) as exc:
        _fail(str(exc), EXIT_USAGE_ERROR)
    try:
        asyncio.run(_serve(work))
    except BrokerConnectionError as exc:
        _fail(str(exc), EXIT_RUNTIME_ERROR)
    _exit_now_if_threads_linger()


async def _serve(work: Worker) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    interrupts = 0

    def on_signal(signum: int) -> None:
        nonlocal interrupts
        if signum == signal.SIGINT:
            interrupts += 1
        if stop.is_set() and interrupts >= 2:
            log.warning("second interrupt: stopping at once, unfinished messages are requeued")
            work.force_stop()
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    if SUPERVISED_ENV in os.environ:
        watchdog = asyncio.ensure_future(_stop_when_orphaned(stop))

    await work.start()
    try:
        broker_url = (
            redact_url(getattr(work.broker, "url", "")) if hasattr(work.broker, "url") else ""
        )
        queues = ", ".join(f"{p.name} (prefetch {p.prefetch})" for p in work._plans)
        log.info(
            "worker started: pid %d, broker %s, queues %s, concurrency %d, threads %d",
            os.getpid(),
            broker_url or type(work.broker).__name__,
            queues,
            work.concurrency,
            work.threads,
        )
        await stop.wait()
        log.info("stopping: no new messages; waiting up to %.1f s", work.shutdown_timeout)
        await work.stop()
    finally:
        await work.stop(timeout=0)
        await work.broker.close()
        if SUPERVISED_ENV in os.environ:
            watchdog.cancel()
        log.info("worker stopped")


async def _stop_when_orphaned(stop: asyncio.Event) -> None:
    """A supervised worker whose supervisor died (even by SIGKILL) stops gracefully."""
    parent = os.getppid()
    while os.getppid() == parent:  # noqa: ASYNC110 - nothing to wait on but the pid
        await asyncio.sleep(1.0)
    log.warning("the supervising process is gone; stopping")
    stop.set()


def _supervise(processes: int, shutdown_timeout: float) -> int:
    """Run ``processes`` worker children and restart those that die; hold no connection."""
    argv = _child_argv()
    children: dict[int, subprocess.Popen[bytes]] = {}
    stopping = False
    started_at: dict[int, float] = {}

    def spawn(index: int) -> None:
        env = {**os.environ, SUPERVISED_ENV: str(index)}
        # A session of its own: a terminal's Ctrl-C reaches the parent only, which forwards it.
        children[index] = subprocess.Popen(argv, env=env, start_new_session=True)
        started_at[index] = time.monotonic()

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for index in range(processes):
        spawn(index)
    log.info("supervising %d worker processes", processes)
    exit_code = 0
    while True:
        alive = 0
        for index, child in list(children.items()):
            code = child.poll()
            if code is None:
                alive += 1
                continue
            if stopping:
                continue
            if (
                code in (EXIT_RUNTIME_ERROR, EXIT_USAGE_ERROR)
                and time.monotonic() - started_at[index] < 30
            ):
                log.error("worker process %d failed at startup (exit %d); stopping", index, code)
                exit_code = code
                forward(signal.SIGTERM, None)
                continue
            log.warning(
                "worker process %d (pid %d) exited with %s; restarting it", index, child.pid, code
            )
            spawn(index)
            alive += 1
        if alive == 0 and (stopping or exit_code):
            return exit_code
        time.sleep(0.2)


def _child_argv() -> list[str]:
    """This command line, as one worker process (without --processes)."""
    args = sys.argv[1:]
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in ("-p", "--processes"):
            skip = True
            continue
        if arg.startswith("--processes=") or (arg.startswith("-p") and arg[2:].isdigit()):
            continue
        out.append(arg)
    return [sys.executable, "-m", "aqueue", *out]


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s [%(process)d] %(name)s: %(message)s",
    )


def _fail(message: str, code: int) -> None:
    click.echo(f"aqueue: error: {message}", err=True)
    sys.exit(code)


def _exit_now_if_threads_linger() -> None:
    """Blocking actors abandoned at shutdown must not keep the process alive."""
    if any(
        t.is_alive() and not t.daemon
        for t in threading.enumerate()
        if t is not threading.main_thread()
    ):
        logging.shutdown()
        os._exit(0)
