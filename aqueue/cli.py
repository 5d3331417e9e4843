"""The ``aqueue`` command line.

Commands: ``worker`` runs actors; ``queues``, ``dlq ls|show|replay|purge``, ``send`` and
``check`` are for operators. Errors are one line on stderr, ``aqueue: error: ...``
(``aqueue --debug COMMAND`` shows the traceback instead).

Exit codes: 0 success (including a graceful stop on SIGTERM or SIGINT), 1 a runtime
error (for example the broker cannot be reached, a queue or dead letter does not exist,
``check`` found a problem, a confirmation was declined), 2 a usage error (bad options
or arguments, modules that cannot be imported, no actors, arguments that do not fit the
actor), 130 interrupted by Ctrl-C (operator commands).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NoReturn, TypeVar

import aiormq
import click

from . import __version__, _admin
from ._admin import AdminError
from ._loading import LoadError, load_broker
from ._logging import configure_logging
from ._url import redact_url
from .broker import Broker
from .brokers.rabbitmq import RabbitmqBroker
from .errors import AqueueError, BrokerConnectionError, ValidationError, WorkerError
from .worker import Worker

log = logging.getLogger("aqueue.cli")

EXIT_RUNTIME_ERROR = 1
EXIT_USAGE_ERROR = 2
EXIT_INTERRUPTED = 130
SUPERVISED_ENV = "AQUEUE_WORKER_INDEX"
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

T = TypeVar("T")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="aqueue")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs of errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """aqueue: an asyncio-native task queue for RabbitMQ."""
    ctx.obj = {"debug": debug}


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
    log_level: str,
    log_format: str,
    metrics_port: int | None,
    metrics_host: str,
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
        sys.exit(_supervise(processes, shutdown_timeout, metrics))
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
        if metrics is not None:
            _add_metrics_middleware(broker)
    except (LoadError, WorkerError, ValueError) as exc:
        _fail(str(exc), EXIT_USAGE_ERROR)
    if metrics is not None and SUPERVISED_ENV not in os.environ:
        # A supervised process only records; its supervisor serves the sum of all.
        _serve_metrics(*metrics, multiprocess_dir=os.environ.get(MULTIPROCESS_ENV))
    try:
        _run(_serve(work), loop_name.lower())
    except BrokerConnectionError as exc:
        _fail(str(exc), EXIT_RUNTIME_ERROR)
    _exit_now_if_threads_linger()


def _run(main: Coroutine[Any, Any, None], loop_name: str) -> None:
    """Run ``main`` on asyncio's loop, or on uvloop's when asked for or (auto) installed."""
    if loop_name != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop_name == "uvloop":
                main.close()
                _fail("--loop uvloop needs uvloop: pip install 'aqueue[uvloop]'", EXIT_USAGE_ERROR)
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


def _supervise(
    processes: int, shutdown_timeout: float, metrics: tuple[str, int] | None = None
) -> int:
    """Run ``processes`` worker children and restart those that die; hold no connection.

    With ``metrics``, the children write their metrics to a fresh directory
    (prometheus-client's multiprocess mode) and this process serves their sum.
    """
    metrics_dir: str | None = None
    if metrics is not None:
        metrics_dir = tempfile.mkdtemp(prefix="aqueue-metrics-")
        os.environ[MULTIPROCESS_ENV] = metrics_dir  # before prometheus_client is imported
        try:
            _serve_metrics(*metrics, multiprocess_dir=metrics_dir)
        except SystemExit:
            shutil.rmtree(metrics_dir, ignore_errors=True)
            raise
    try:
        return _run_children(processes, metrics_dir)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _run_children(processes: int, metrics_dir: str | None) -> int:
    argv = _child_argv()
    children: dict[int, subprocess.Popen[bytes]] = {}
    stopping = False
    started_at: dict[int, float] = {}
    finished: set[int] = set()

    def process_ended(child: subprocess.Popen[bytes]) -> None:
        # Its in-progress gauge no longer counts; its counters stay in the sum.
        if metrics_dir is not None and child.pid not in finished:
            finished.add(child.pid)
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(child.pid, metrics_dir)  # type: ignore[no-untyped-call]

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
            process_ended(child)
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


def _add_metrics_middleware(broker: Broker) -> None:
    try:
        from .middleware.prometheus import Prometheus
    except ImportError as exc:
        raise LoadError(
            f"--metrics-port needs prometheus-client: pip install 'aqueue[metrics]' ({exc})"
        ) from None
    if not any(isinstance(m, Prometheus) for m in broker.middleware):
        broker.add_middleware(Prometheus())


def _serve_metrics(host: str, port: int, *, multiprocess_dir: str | None) -> None:
    """Serve the metrics over HTTP from a daemon thread; the sum of all processes of
    ``multiprocess_dir`` when given."""
    try:
        import prometheus_client
        from prometheus_client import multiprocess
    except ImportError as exc:
        _fail(
            f"--metrics-port needs prometheus-client: pip install 'aqueue[metrics]' ({exc})",
            EXIT_USAGE_ERROR,
        )
    registry: prometheus_client.CollectorRegistry = prometheus_client.REGISTRY
    if multiprocess_dir is not None:
        registry = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
    try:
        prometheus_client.start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        _fail(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}", EXIT_RUNTIME_ERROR)
    log.info("serving Prometheus metrics on http://%s:%d/metrics", host, port)


def _fail(message: str, code: int) -> NoReturn:
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


# -- operator commands --------------------------------------------------------------------------

BROKER_HELP = (
    "MODULE or MODULE:ATTRIBUTE that builds the broker, as for `aqueue worker`; "
    "default: a broker on AQUEUE_BROKER_URL, else amqp://guest:guest@127.0.0.1:5672/."
)


class _Duration(click.ParamType):  # type: ignore[type-arg]  # generic in click 8.2+
    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return _admin.parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = _Duration()


def _debug() -> bool:
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx is not None else None
    return bool(root is not None and isinstance(root.obj, dict) and root.obj.get("debug"))


def _operator_broker(spec: str | None, *, attempts: int = 2) -> Broker:
    """The broker of ``--broker``, else one on the environment's URL; quick to give up."""
    try:
        broker = load_broker([spec]) if spec else RabbitmqBroker()
    except (LoadError, ValueError) as exc:
        _fail(str(exc), EXIT_USAGE_ERROR)
    if isinstance(broker, RabbitmqBroker):
        broker.connect_attempts = min(broker.connect_attempts, attempts)
        broker.connect_retry_delay = min(broker.connect_retry_delay, 0.5)
    return broker


def _operate(work: Callable[[], Awaitable[T]]) -> T:
    """Run an operator command's coroutine; errors become one line and an exit code."""
    debug = _debug()
    # The error itself is the one line printed; logs only with --debug.
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.CRITICAL,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return asyncio.run(_main_of(work))
    except AdminError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", EXIT_INTERRUPTED)
    except (LoadError, ValidationError) as exc:
        if debug:
            raise
        _fail(str(exc), EXIT_USAGE_ERROR)
    except (AqueueError, aiormq.exceptions.AMQPError, OSError, TimeoutError) as exc:
        if debug:
            raise
        _fail(_describe(exc), EXIT_RUNTIME_ERROR)
    except Exception as exc:
        if debug:
            raise
        _fail(
            f"unexpected {_describe(exc)} (run `aqueue --debug ...` for the traceback)",
            EXIT_RUNTIME_ERROR,
        )


async def _main_of(work: Callable[[], Awaitable[T]]) -> T:
    return await work()


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, AqueueError):
        return text
    return f"{type(exc).__name__}: {text}"


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


broker_option = click.option(
    "--broker", "broker_spec", metavar="MODULE[:ATTRIBUTE]", help=BROKER_HELP
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@main.command()
@click.argument("queue_names", nargs=-1, metavar="[QUEUE ...]")
@broker_option
@json_option
def queues(queue_names: tuple[str, ...], broker_spec: str | None, as_json: bool) -> None:
    """Ready messages, consumers and dead letters of each QUEUE.

    Without QUEUE names, the queues of the actors of --broker's module. Counts come
    from passive declares: no management plugin needed. A queue that does not
    exist is shown as missing.
    """
    broker = _operator_broker(broker_spec)
    try:
        names = _admin.queue_names_of(broker, queue_names)
    except AdminError as exc:
        _fail(str(exc), exc.exit_code)

    async def work() -> list[_admin.QueueRow]:
        try:
            return await _admin.queue_rows(broker, names)
        finally:
            await broker.close()

    rows = _operate(work)
    if as_json:
        _echo_json([row.asdict() for row in rows])
    else:
        click.echo(_admin.queues_table(rows))


@main.group()
def dlq() -> None:
    """Dead letters: list, show, replay and purge the messages that failed for good."""


@dlq.command("ls")
@click.argument("queue")
@broker_option
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Show at most this many.",
)
@json_option
def dlq_ls(queue: str, broker_spec: str | None, limit: int, as_json: bool) -> None:
    """List the dead letters of QUEUE (they stay in QUEUE.XQ): id, actor, reason, failed at."""
    broker = _operator_broker(broker_spec)

    async def work() -> tuple[list[Any], int]:
        try:
            return await _admin.list_dead_letters(broker, queue, limit=limit)
        finally:
            await broker.close()

    letters, total = _operate(work)
    if as_json:
        _echo_json([_admin.letter_summary(letter) for letter in letters])
        return
    if not letters:
        click.echo(f"no dead letters in {queue}.XQ")
        return
    click.echo(_admin.dead_letters_table(letters))
    if total > len(letters):
        click.echo(f"({len(letters)} of {total} shown; use --limit to see more)")


@dlq.command("show")
@click.argument("queue")
@click.argument("message_id")
@broker_option
@json_option
def dlq_show(queue: str, message_id: str, broker_spec: str | None, as_json: bool) -> None:
    """Show the dead letter MESSAGE_ID of QUEUE: message, failure headers and traceback."""
    broker = _operator_broker(broker_spec)

    async def work() -> list[Any]:
        try:
            return await _admin.find_dead_letters(broker, queue, message_id)
        finally:
            await broker.close()

    letters = _operate(work)
    if as_json:
        details = [_admin.letter_details(letter) for letter in letters]
        _echo_json(details[0] if len(details) == 1 else details)
        return
    click.echo("\n\n".join(_admin.letter_text(letter, queue) for letter in letters))


@dlq.command("replay")
@click.argument("queue")
@click.option("--id", "message_ids", multiple=True, metavar="ID", help="Replay this one (repeat).")
@click.option("--actor", "actor_name", metavar="NAME", help="Replay those of this actor.")
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter of QUEUE.")
@broker_option
def dlq_replay(
    queue: str,
    message_ids: tuple[str, ...],
    actor_name: str | None,
    replay_all: bool,
    broker_spec: str | None,
) -> None:
    """Send dead letters back to QUEUE with their retry count reset.

    Each is published and confirmed by RabbitMQ before it is removed from QUEUE.XQ:
    a replay killed half way may run a message twice, never lose one.
    """
    if replay_all and (message_ids or actor_name):
        raise click.UsageError("--all cannot be combined with --id or --actor")
    if not (replay_all or message_ids or actor_name):
        raise click.UsageError("say which: --id ID (repeatable), --actor NAME or --all")
    broker = _operator_broker(broker_spec)
    ids = list(dict.fromkeys(message_ids)) or None

    async def work() -> int:
        try:
            await _admin.dead_letter_count(broker, queue)
            return await broker.requeue_dead_letters(queue, message_ids=ids, actor_name=actor_name)
        finally:
            await broker.close()

    count = _operate(work)
    click.echo(f"replayed {count} dead letter{'s' if count != 1 else ''} to {queue}")
    if ids is not None and count < len(ids):
        _fail(
            f"{len(ids) - count} of the {len(ids)} ids were not found in {queue}.XQ",
            EXIT_RUNTIME_ERROR,
        )


@dlq.command("purge")
@click.argument("queue")
@click.option(
    "--older-than",
    type=DURATION,
    default=None,
    metavar="DURATION",
    help="Only those that failed longer ago than this: 7d, 12h, 30m, 45s or seconds.",
)
@click.option("--id", "message_ids", multiple=True, metavar="ID", help="Only this one (repeat).")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@broker_option
def dlq_purge(
    queue: str,
    older_than: float | None,
    message_ids: tuple[str, ...],
    yes: bool,
    broker_spec: str | None,
) -> None:
    """Delete dead letters of QUEUE for good, after a confirmation prompt."""
    broker = _operator_broker(broker_spec)
    ids = list(dict.fromkeys(message_ids)) or None

    async def work() -> int | None:
        try:
            total = await _admin.dead_letter_count(broker, queue)
            if total == 0:
                return None
            if not yes:
                question = f"Delete all {total} dead letters of {queue}?"
                if older_than is not None or ids is not None:
                    conditions = []
                    if ids is not None:
                        conditions.append(f"with the {len(ids)} ids given")
                    if older_than is not None:
                        ago = _admin.format_duration(older_than)
                        conditions.append(f"that failed more than {ago} ago")
                    question = (
                        f"Delete the dead letters of {queue} {' and '.join(conditions)} "
                        f"({total} in {queue}.XQ)?"
                    )
                # In a thread: the connection keeps its heartbeats while the operator reads.
                if not await asyncio.to_thread(click.confirm, question):
                    raise AdminError("nothing deleted")
            return await broker.purge_dead_letters(queue, message_ids=ids, older_than=older_than)
        finally:
            await broker.close()

    count = _operate(work)
    if count is None:
        click.echo(f"no dead letters in {queue}.XQ")
    else:
        click.echo(f"deleted {count} dead letter{'s' if count != 1 else ''} of {queue}")


@main.command()
@click.argument("actor_spec", metavar="MODULE:ACTOR")
@click.option("--args", "args_json", metavar="JSON", help="Positional arguments, a JSON array.")
@click.option("--kwargs", "kwargs_json", metavar="JSON", help="Keyword arguments, a JSON object.")
@click.option(
    "--options",
    "options_json",
    metavar="JSON",
    help="Message options, a JSON object: '{\"max_retries\": 0}'.",
)
@click.option("--delay", type=DURATION, default=None, help="Deliver after this long: 30s, 5m, 90.")
def send(
    actor_spec: str,
    args_json: str | None,
    kwargs_json: str | None,
    options_json: str | None,
    delay: float | None,
) -> None:
    """Send a message to the actor MODULE:ACTOR, checked against its signature like send().

    The message goes through the actor's own broker. Prints the message id.
    """
    try:
        actor = _admin.load_actor(actor_spec)
        args = _admin.parse_json("--args", args_json, list)
        kwargs = _admin.parse_json("--kwargs", kwargs_json, dict)
        options = _admin.parse_json("--options", options_json, dict)
    except LoadError as exc:
        _fail(str(exc), EXIT_USAGE_ERROR)
    except AdminError as exc:
        _fail(str(exc), exc.exit_code)
    if isinstance(actor.broker, RabbitmqBroker):
        actor.broker.connect_attempts = min(actor.broker.connect_attempts, 2)

    async def work() -> Any:
        return await _admin.send(actor, args=args, kwargs=kwargs, options=options, delay=delay)

    message = _operate(work)
    click.echo(f"sent {message.message_id} to {message.queue_name}")


@main.command()
@click.argument("queue_names", nargs=-1, metavar="[QUEUE ...]")
@broker_option
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds to wait for the broker.",
)
def check(queue_names: tuple[str, ...], broker_spec: str | None, timeout: float) -> None:
    """Exit 0 if the broker answers and the topology is in place; else 1 with the reason.

    Checks the queues of --broker's actors and the QUEUEs named, their dead-letter
    queues and the delay delivery exchange, with passive declares (nothing is created).
    For container health checks.
    """
    broker = _operator_broker(broker_spec, attempts=1)

    async def work() -> None:
        try:
            await _admin.check(broker, queue_names, timeout=timeout)
        finally:
            await broker.close()

    _operate(work)
    click.echo("ok")
