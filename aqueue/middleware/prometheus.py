"""Prometheus metrics of workers and senders (needs the ``metrics`` extra: prometheus-client).

Import it only when you use it::

    from aqueue.middleware.prometheus import Prometheus

    broker.add_middleware(Prometheus())

``aqueue worker --metrics-port 9191`` does this for you and serves the metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from ..context import MessageContext
from .base import Middleware
from .limits import LimitMetrics, Limits

if TYPE_CHECKING:
    from ..broker import Broker
    from ..message import Message
    from ..worker import Worker

__all__ = ["DURATION_BUCKETS", "LATENCY_BUCKETS", "Prometheus"]

log = logging.getLogger(__name__)

#: Seconds; processing time of one message.
DURATION_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)
#: Seconds; from when a message was sent to when a worker started it.
LATENCY_BUCKETS: tuple[float, ...] = (*DURATION_BUCKETS, 21600.0, 86400.0)

_LABELS = ("queue", "actor")


class _Started:
    """What the middleware remembers of a message between its hooks."""

    __slots__ = ("callback", "done", "key", "labels", "started", "task")

    def __init__(self, key: int, labels: tuple[str, str]) -> None:
        self.key = key
        self.labels = labels
        self.started = time.perf_counter()
        self.done = False
        self.task: asyncio.Task[Any] | None = None
        self.callback: Callable[[asyncio.Task[Any]], None] | None = None


class Prometheus(Middleware):
    """Count and time messages with prometheus-client.

    Add it last (``broker.add_middleware(Prometheus())``) so that it sees what the
    retry middleware decided. All metrics are named ``<namespace>_...`` (default
    ``aqueue_``) and labelled by ``queue`` and ``actor``:

    * ``messages_received_total``: messages of a known actor that reached a worker.
    * ``messages_succeeded_total``, ``messages_failed_total``: actor runs that returned /
      raised (every failed run counts, retried or not).
    * ``messages_retried_total``: failed runs for which a retry was scheduled.
    * ``messages_dead_lettered_total``: messages that failed for good or were skipped
      into the dead-letter queue.
    * ``messages_skipped_total``: messages a middleware skipped (``SkipMessage``).
    * ``messages_in_progress``: gauge of messages being processed.
    * ``message_duration_seconds``: histogram of processing time.
    * ``message_queue_latency_seconds``: histogram of the time from ``send()`` to the start
      of processing, for first attempts (a delay counts as waiting time).
    * ``messages_delayed_total``: messages published with a delay (retries included).
    * ``broker_reconnects_total`` (no labels): reconnections of the worker's connections.
    * ``broker_blocked`` (no labels): 1 while RabbitMQ blocks the worker's publishing
      connection during a memory or disk alarm (sends wait, consuming goes on), else 0.
    * ``queue_consuming`` (label ``queue`` only): 1 while the worker's consumer of the
      queue is subscribed, 0 while it is not (subscribing again after a lost channel or
      connection, or a cancel by RabbitMQ) and after the worker stopped. Read from the
      worker every ``consuming_interval`` seconds. With several processes, the lowest:
      0 as soon as one process does not consume the queue.
    * ``limit_waiting``, ``limit_tokens_in_use`` (label ``limit`` only): gauges of the
      messages waiting for a token of the limit, and of its concurrency tokens held by runs
      (summed over processes); ``limit_postponed_total``: messages postponed for want of one.

    Args:
        registry: Where to register the metrics (default: prometheus-client's global
            ``REGISTRY``). In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set) the
            values go to that directory whatever the registry.
        namespace: Prefix of the metric names.
        duration_buckets: Histogram buckets of ``message_duration_seconds``.
        latency_buckets: Histogram buckets of ``message_queue_latency_seconds``.
        consuming_interval: Seconds between two updates of ``queue_consuming``.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = REGISTRY,
        namespace: str = "aqueue",
        duration_buckets: Sequence[float] = DURATION_BUCKETS,
        latency_buckets: Sequence[float] = LATENCY_BUCKETS,
        consuming_interval: float = 1.0,
    ) -> None:
        if consuming_interval <= 0:
            raise ValueError("consuming_interval must be positive")

        def counter(name: str, doc: str, labels: Sequence[str] = _LABELS) -> Counter:
            return Counter(name, doc, labels, namespace=namespace, registry=registry)

        self.received = counter("messages_received", "Messages that reached a worker.")
        self.succeeded = counter("messages_succeeded", "Actor runs that returned.")
        self.failed = counter("messages_failed", "Actor runs that raised (retried or not).")
        self.retried = counter("messages_retried", "Failed runs for which a retry was scheduled.")
        self.dead_lettered = counter(
            "messages_dead_lettered", "Messages moved to the dead-letter queue."
        )
        self.skipped = counter("messages_skipped", "Messages a middleware skipped.")
        self.delayed = counter("messages_delayed", "Messages published with a delay.")
        self.reconnects = counter(
            "broker_reconnects", "Reconnections of the worker's broker connections.", ()
        )
        self.blocked = Gauge(
            "broker_blocked",
            "1 while RabbitMQ blocks the publishing connection (a memory or disk alarm).",
            namespace=namespace,
            registry=registry,
            multiprocess_mode="livemax",
        )
        # Updated by a task of the worker, not with set_function(): that does not work in
        # multiprocess mode. livemin: a queue one process does not consume shows 0.
        self.consuming = Gauge(
            "queue_consuming",
            "1 while the worker's consumer of the queue is subscribed, else 0.",
            ("queue",),
            namespace=namespace,
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.in_progress = Gauge(
            "messages_in_progress",
            "Messages being processed.",
            _LABELS,
            namespace=namespace,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.duration = Histogram(
            "message_duration_seconds",
            "Processing time of a message, middleware included.",
            _LABELS,
            namespace=namespace,
            registry=registry,
            buckets=duration_buckets,
        )
        self.queue_latency = Histogram(
            "message_queue_latency_seconds",
            "Time from send() to the start of processing (first attempts).",
            _LABELS,
            namespace=namespace,
            registry=registry,
            buckets=latency_buckets,
        )
        self.schedule_ticks = Counter(
            "schedule_ticks",
            "Ticks of a schedule this process fired, or skipped (older than misfire_grace).",
            ("schedule", "outcome"),
            namespace=namespace,
            registry=registry,
        )
        self.scheduler_active = Gauge(
            "scheduler_active",
            "1 while this process is the active scheduler of the schedule, else 0.",
            ("schedule",),
            namespace=namespace,
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.limit_waiting = Gauge(
            "limit_waiting",
            "Messages waiting for a token of the limit.",
            ("limit",),
            namespace=namespace,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.limit_tokens_in_use = Gauge(
            "limit_tokens_in_use",
            "Concurrency tokens of the limit held by runs.",
            ("limit",),
            namespace=namespace,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.limit_postponed = counter(
            "limit_postponed", "Messages postponed for want of a token.", ("limit",)
        )
        self._started: dict[int, _Started] = {}
        self._listening: list[Callable[[], None]] = []
        self._consuming_interval = consuming_interval
        self._watching: dict[int, asyncio.Task[None]] = {}
        self._consumed: dict[int, list[str]] = {}  # the queues of each running worker

    # -- sending ----------------------------------------------------------------------------

    async def after_enqueue(self, broker: Broker, message: Message, delay: float | None) -> None:
        if delay:
            self.delayed.labels(message.queue_name, message.actor_name).inc()

    # -- processing -------------------------------------------------------------------------

    async def before_process_message(self, context: MessageContext) -> None:
        message = context.message
        labels = (message.queue_name, message.actor_name)
        self.received.labels(*labels).inc()
        if not message.options.get("retries"):
            latency = time.time() - message.message_timestamp / 1000
            self.queue_latency.labels(*labels).observe(max(0.0, latency))
        started = _Started(id(context), labels)
        self._started[started.key] = started
        self.in_progress.labels(*labels).inc()
        # Processing that ends without the after-hooks (the worker cancels it at shutdown,
        # or an earlier middleware's hook raised) must not leave the gauge up: each
        # delivery runs in a task of its own, whose end settles it too.
        task = asyncio.current_task()
        if task is not None:
            started.task = task
            started.callback = lambda _task: self._settle(started)
            task.add_done_callback(started.callback)

    async def after_process_message(self, context: MessageContext) -> None:
        started = self._finish(id(context))
        labels = (
            started.labels
            if started is not None
            else (context.message.queue_name, context.message.actor_name)
        )
        if started is not None:
            self.duration.labels(*labels).observe(time.perf_counter() - started.started)
        if context.exception is None:
            self.succeeded.labels(*labels).inc()
            return
        self.failed.labels(*labels).inc()
        if context.retry_scheduled:
            self.retried.labels(*labels).inc()
        else:
            self.dead_lettered.labels(*labels).inc()

    async def after_skip_message(self, context: MessageContext) -> None:
        labels = (context.message.queue_name, context.message.actor_name)
        if self._finish(id(context)) is None:
            # Skipped by a middleware before this one: not counted as received yet.
            self.received.labels(*labels).inc()
        self.skipped.labels(*labels).inc()
        skip = context.skip
        if skip is None or skip.dead_letter:
            self.dead_lettered.labels(*labels).inc()

    async def after_reject_message(
        self, broker: Broker, message: Message, error: Exception, reason: str
    ) -> None:
        # Dead-lettered unrun. An actor this worker does not know is labelled "(unknown)":
        # names from a misbehaving producer must not grow the label set without end.
        actor = message.actor_name if message.actor_name in broker.actors else "(unknown)"
        labels = (message.queue_name, actor)
        self.received.labels(*labels).inc()
        self.dead_lettered.labels(*labels).inc()

    def _finish(self, key: int) -> _Started | None:
        started = self._started.get(key)
        if started is None or started.done:
            return None
        self._settle(started)
        if started.task is not None and started.callback is not None:
            started.task.remove_done_callback(started.callback)
        started.task = started.callback = None
        return started

    def _settle(self, started: _Started) -> None:
        if started.done:
            return
        started.done = True
        if self._started.get(started.key) is started:
            del self._started[started.key]
        self.in_progress.labels(*started.labels).dec()

    # -- worker life ------------------------------------------------------------------------

    async def before_worker_boot(self, broker: Broker, worker: Worker) -> None:
        # Every series from zero, so that rate() and increase() see the first message.
        queues = None if worker.queues is None else set(worker.queues)
        for actor in list(broker.actors.values()):
            if queues is not None and actor.queue_name not in queues:
                continue
            labels = (actor.queue_name, actor.actor_name)
            for counter in (
                self.received,
                self.succeeded,
                self.failed,
                self.retried,
                self.dead_lettered,
                self.skipped,
                self.delayed,
            ):
                counter.labels(*labels)
            self.in_progress.labels(*labels)
        for m in broker.middleware:
            if isinstance(m, Limits):
                m.metrics = LimitMetrics(
                    waiting=lambda name, n: self.limit_waiting.labels(name).inc(n),
                    in_use=lambda name, n: self.limit_tokens_in_use.labels(name).inc(n),
                    postponed=lambda name: self.limit_postponed.labels(name).inc(),
                )
        self.blocked.set(1 if broker.blocked else 0)
        self._listening.append(broker.add_connection_listener(self._on_connection_event))

    async def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        self._update_consuming(worker)
        scheduler = worker.scheduler
        if scheduler is not None:
            for name, active in scheduler.active.items():
                self.scheduler_active.labels(name).set(1 if active else 0)
                for outcome in ("fired", "skipped"):
                    self.schedule_ticks.labels(name, outcome)
            self._listening.append(scheduler.add_listener(self._on_schedule_event))
        self._watching[id(worker)] = asyncio.ensure_future(self._watch_consuming(worker))

    async def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        listening, self._listening = self._listening, []
        for remove in listening:
            remove()
        task = self._watching.pop(id(worker), None)
        if task is not None:
            task.cancel()
        # The worker consumes nothing now (its consumers are gone: the property is empty).
        for queue in self._consumed.pop(id(worker), ()):
            self.consuming.labels(queue).set(0)

    async def _watch_consuming(self, worker: Worker) -> None:
        while True:
            await asyncio.sleep(self._consuming_interval)
            try:
                self._update_consuming(worker)
            except Exception:  # never let the metrics stop: log, try again later
                log.exception("updating the queue_consuming metric failed")

    def _update_consuming(self, worker: Worker) -> None:
        states = worker.consuming_queues
        if states:
            self._consumed[id(worker)] = list(states)
        for queue, consuming in states.items():
            self.consuming.labels(queue).set(1 if consuming else 0)

    def _on_schedule_event(self, schedule_name: str, event: str) -> None:
        if event in ("fired", "skipped"):
            self.schedule_ticks.labels(schedule_name, event).inc()
        elif event in ("active", "standby"):
            self.scheduler_active.labels(schedule_name).set(1 if event == "active" else 0)

    def _on_connection_event(self, event: str) -> None:
        if event == "reconnected":
            self.reconnects.inc()
        elif event in ("blocked", "unblocked"):
            self.blocked.set(1 if event == "blocked" else 0)
