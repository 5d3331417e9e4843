"""``aqueue worker``: load the broker, run a worker on the event loop until a signal stops it.

With ``--processes N`` the command becomes a supervisor of N such processes
(``supervisor``); with ``--metrics-port`` it serves Prometheus metrics (``metrics``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Coroutine
from typing import Any

import click

from .._loading import LoadError, load_broker
from .._logging import configure_logging
from .._url import redact_url
from ..brokers.rabbitmq.server import format_version
from ..errors import BrokerConnectionError, WorkerError
from ..middleware.events import TaskEvents
from ..worker import Worker
from ._common import EXIT_RUNTIME_ERROR, EXIT_USAGE_ERROR, fail, log
from .metrics import MULTIPROCESS_ENV, add_metrics_middleware, serve_metrics
from .supervisor import READY_FD_ENV, SUPERVISED_ENV, supervise

__all__ = ["worker"]

#: Seconds the broker's connections get to close even when the shutdown timeout ran out,
#: and at most (aiormq waits 2 s for the answer to each connection's close).
_CLOSE_GRACE = 1.0
_UNANSWERED_CLOSE = 5.0


@click.command()
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
    help="Worker processes, each with its own two connections (consume, publish).",
)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds running messages get to finish on SIGTERM/SIGINT before they are given back.",
)
@click.option(
    "--prefetch-exact",
    is_flag=True,
    help="Fetch only what runs: prefetch equal to concurrency, without the headroom of "
    "blocking actors (for autoscaled fleets: the backlog stays in the queue, where the "
    "autoscaler sees it and new workers take it).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"], case_sensitive=False),
    default="text",
    show_default=True,
    help="json: one JSON object per line, with message_id, actor and queue fields.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=1, max=65535),
    default=None,
    help="Serve Prometheus metrics on this port (needs the 'metrics' extra).",
)
@click.option(
    "--metrics-host",
    default="0.0.0.0",
    show_default=True,
    help="Address the metrics server listens on.",
)
@click.option(
    "--events",
    is_flag=True,
    help="Publish each message's outcome to the aqueue.events stream, for the task history "
    "of `aqueue dashboard` (adds the TaskEvents middleware unless the broker has it).",
)
@click.option(
    "--no-scheduler",
    is_flag=True,
    help="Do not run the schedules of MODULE(s) in this worker (run `aqueue scheduler` "
    "elsewhere, or another worker does).",
)
@click.option(
    "--loop",
    "loop_name",
    type=click.Choice(["auto", "asyncio", "uvloop"], case_sensitive=False),
    default="auto",
    show_default=True,
    help="Event loop: auto uses uvloop when it is installed (the 'uvloop' extra).",
)
def worker(
    modules: tuple[str, ...],
    queues: tuple[str, ...],
    concurrency: int,
    threads: int,
    processes: int,
    shutdown_timeout: float,
    prefetch_exact: bool,
    log_level: str,
    log_format: str,
    metrics_port: int | None,
    metrics_host: str,
    events: bool,
    no_scheduler: bool,
    loop_name: str,
) -> None:
    """Run a worker for the actors declared in MODULE(s).

    The broker is MODULE:BROKER when given, else the first module's `broker`
    attribute, else the default broker (AQUEUE_BROKER_URL or the local RabbitMQ).
    SIGTERM or SIGINT stops gracefully; a second SIGINT stops at once.
    """
    configure_logging(log_level, log_format.lower())
    metrics = None if metrics_port is None else (metrics_host, metrics_port)
    if processes > 1:
        sys.exit(supervise(processes, shutdown_timeout, metrics))
    queue_names = [q.strip() for item in queues for q in item.split(",") if q.strip()]
    try:
        broker = load_broker(list(modules))
        work = Worker(
            broker,
            queues=queue_names or None,
            concurrency=concurrency,
            threads=threads,
            shutdown_timeout=shutdown_timeout,
            prefetch_exact=prefetch_exact,
            scheduler=not no_scheduler,
        )
        work.plan()
        if metrics is not None:
            add_metrics_middleware(broker)
        if events and not any(isinstance(m, TaskEvents) for m in broker.middleware):
            broker.add_middleware(TaskEvents())  # last: it sees whether a retry was scheduled
    except (LoadError, WorkerError, ValueError) as exc:
        fail(str(exc), EXIT_USAGE_ERROR)
    if metrics is not None and SUPERVISED_ENV not in os.environ:
        # A supervised process only records; its supervisor serves the sum of all.
        serve_metrics(*metrics, multiprocess_dir=os.environ.get(MULTIPROCESS_ENV))
    try:
        _run(_serve(work), loop_name.lower())
    except BrokerConnectionError as exc:
        fail(str(exc), EXIT_RUNTIME_ERROR)
    _exit_now_if_threads_linger()


def _run(main: Coroutine[Any, Any, None], loop_name: str) -> None:
    """Run ``main`` on asyncio's loop, or on uvloop's when asked for or (auto) installed."""
    if loop_name != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop_name == "uvloop":
                main.close()
                fail("--loop uvloop needs uvloop: pip install 'aqueue[uvloop]'", EXIT_USAGE_ERROR)
        else:
            log.debug("using uvloop")
            if sys.version_info >= (3, 11):
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    runner.run(main)
            else:  # pragma: no cover - Python 3.10
                uvloop.install()
                asyncio.run(main)
            return
    asyncio.run(main)


async def _serve(work: Worker) -> None:
    """Start ``work``, wait for SIGTERM or SIGINT, stop it and close its broker."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    interrupts = 0

    def on_signal(signum: int) -> None:
        nonlocal interrupts
        if signum == signal.SIGINT:
            interrupts += 1
        if stop.is_set() and interrupts >= 2:
            log.warning("second interrupt: stopping at once, unfinished messages are given back")
            work.force_stop()
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    if SUPERVISED_ENV in os.environ:
        watchdog = asyncio.ensure_future(_stop_when_orphaned(stop))

    await work.start()
    _tell_supervisor_ready()
    deadline = None  # of the stop: the broker's close fits in the shutdown timeout too
    try:
        broker_url = (
            redact_url(getattr(work.broker, "url", "")) if hasattr(work.broker, "url") else ""
        )
        version = getattr(work.broker, "server_version", None)
        if broker_url and version is not None:
            broker_url += f" (RabbitMQ {format_version(version)})"
        queues = ", ".join(f"{p.name} (prefetch {p.prefetch})" for p in work._plans)
        log.info(
            "worker started: pid %d, broker %s, queues %s, concurrency %d, threads %d%s",
            os.getpid(),
            broker_url or type(work.broker).__name__,
            queues,
            work.concurrency,
            work.threads,
            _schedules_text(work),
        )
        await stop.wait()
        log.info("stopping: no new messages; waiting up to %.1f s", work.shutdown_timeout)
        deadline = loop.time() + work.shutdown_timeout
        await work.stop()
    finally:
        await work.stop(timeout=0)
        await _close_broker(work, loop.time() if deadline is None else deadline)
        if SUPERVISED_ENV in os.environ:
            watchdog.cancel()
        log.info("worker stopped")


async def _close_broker(work: Worker, deadline: float) -> None:
    """Close the broker's connections within the shutdown timeout (a second at least).

    When the worker's stop found the broker unreachable, its connections get a few seconds
    whatever the timeout: each close waits a moment for an answer and then ends the calls
    left pending on it; a close cut short leaves them to be cancelled at exit, each with
    a warning of aiormq's. RabbitMQ requeues what was not acknowledged.
    """
    left = deadline - asyncio.get_running_loop().time()
    unanswered = work._broker_unanswered
    wait = _UNANSWERED_CLOSE if unanswered else min(max(left, _CLOSE_GRACE), _UNANSWERED_CLOSE)
    try:
        await asyncio.wait_for(work.broker.close(), wait)
    except asyncio.TimeoutError:
        # One warning for an unreachable broker: the worker's stop gave it already.
        log.log(
            logging.DEBUG if unanswered else logging.WARNING,
            "the broker did not close its connections in %.1f s; exiting anyway",
            wait,
        )
    except Exception as exc:
        log.warning("closing the broker's connections failed (%s); exiting anyway", exc)


def _tell_supervisor_ready() -> None:
    """A supervised worker consumes now: tell the supervisor (it then restarts this process
    when it dies, instead of taking the exit for a failure to start)."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is None:
        return
    try:
        os.write(int(fd), b"1")
        os.close(int(fd))
    except (OSError, ValueError) as exc:  # no supervisor any more: nobody to tell
        log.debug("could not tell the supervisor this worker started: %r", exc)


async def _stop_when_orphaned(stop: asyncio.Event) -> None:
    """A supervised worker whose supervisor died (even by SIGKILL) stops gracefully."""
    parent = os.getppid()
    while os.getppid() == parent:  # noqa: ASYNC110 - nothing to wait on but the pid
        await asyncio.sleep(1.0)
    log.warning("the supervising process is gone; stopping")
    stop.set()


def _exit_now_if_threads_linger() -> None:
    """Blocking actors abandoned at shutdown must not keep the process alive."""
    if any(
        t.is_alive() and not t.daemon
        for t in threading.enumerate()
        if t is not threading.main_thread()
    ):
        logging.shutdown()
        os._exit(0)


def _schedules_text(work: Worker) -> str:
    """What the started line says of the schedules this worker runs."""
    if work.scheduler is None:
        return ""
    states = ", ".join(
        f"{name} ({'active' if active else 'standing by'})"
        for name, active in work.scheduler.active.items()
    )
    return f", schedules {states}"
