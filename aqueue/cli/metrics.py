"""Prometheus metrics of ``aqueue worker --metrics-port``: the middleware, the HTTP server,
and with ``--processes`` the directory where the children write their metrics.

prometheus-client is imported only here and only when metrics are asked for.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from .._loading import LoadError
from ..broker import Broker
from ._common import EXIT_RUNTIME_ERROR, EXIT_USAGE_ERROR, fail, log

__all__ = [
    "MULTIPROCESS_ENV",
    "add_metrics_middleware",
    "children_metrics",
    "mark_process_dead",
    "serve_metrics",
]

#: prometheus-client's multiprocess mode: the directory where each process writes.
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


def add_metrics_middleware(broker: Broker) -> None:
    """Add the Prometheus middleware to ``broker`` unless it has it; LoadError without
    prometheus-client."""
    try:
        from ..middleware.prometheus import Prometheus
    except ImportError as exc:
        raise LoadError(
            f"--metrics-port needs prometheus-client: pip install 'aqueue[metrics]' ({exc})"
        ) from None
    if not any(isinstance(m, Prometheus) for m in broker.middleware):
        broker.add_middleware(Prometheus())


def serve_metrics(host: str, port: int, *, multiprocess_dir: str | None) -> None:
    """Serve the metrics over HTTP from a daemon thread; the sum of all processes of
    ``multiprocess_dir`` when given."""
    try:
        import prometheus_client
        from prometheus_client import multiprocess
    except ImportError as exc:
        fail(
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
        fail(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}", EXIT_RUNTIME_ERROR)
    log.info("serving Prometheus metrics on http://%s:%d/metrics", host, port)


@contextlib.contextmanager
def children_metrics(metrics: tuple[str, int] | None) -> Iterator[str | None]:
    """With ``metrics`` (host, port): a fresh directory for the children's metrics, whose
    sum is served; removed at the end. Without: None."""
    if metrics is None:
        yield None
        return
    metrics_dir = tempfile.mkdtemp(prefix="aqueue-metrics-")
    os.environ[MULTIPROCESS_ENV] = metrics_dir  # before prometheus_client is imported
    try:
        serve_metrics(*metrics, multiprocess_dir=metrics_dir)
        yield metrics_dir
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def mark_process_dead(pid: int, metrics_dir: str) -> None:
    """A child process ended: its in-progress gauge no longer counts; its counters stay."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]
