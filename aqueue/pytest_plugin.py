"""pytest fixtures for testing code that uses aqueue (registered as a ``pytest11`` plugin).

Installing aqueue makes these fixtures available; suites that do not ask for them are
not affected:

* ``aqueue_broker``: a broker for the test, in-memory unless the run asks for RabbitMQ
  (``--aqueue-broker=rabbitmq`` or ``AQUEUE_TEST_BROKER=rabbitmq``; the URL comes from
  ``AQUEUE_BROKER_URL``). It is the default broker during the test, and the actors of
  the previous default broker (those declared with ``@aqueue.actor``) are moved onto
  it for the test, so application code runs unchanged.
* ``aqueue_worker``: a running :class:`~aqueue.Worker` for ``aqueue_broker``.
* ``aqueue_drain``: ``await aqueue_drain()`` waits until every queue is idle, re-raising
  the first actor failure. It waits for the delayed messages the test sent, and for
  retries; with the in-memory broker delays and retry backoffs are skipped.

The fixtures run on pytest-asyncio (``pip install 'aqueue[pytest]'``). Without it a test
asking for one of them fails with a message saying so, instead of "fixture not found".
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, NoReturn

import pytest

from . import _default_broker
from .broker import Broker, set_broker
from .brokers.memory import InMemoryBroker
from .brokers.rabbitmq import RabbitmqBroker
from .worker import Worker

try:  # pytest-asyncio is how the fixtures run; without it they cannot be used.
    import pytest_asyncio
except ImportError:
    pytest_asyncio = None  # type: ignore[assignment]

MISSING_PYTEST_ASYNCIO = (
    "the aqueue fixtures need pytest-asyncio, which is not installed: "
    "pip install 'aqueue[pytest]' (or pip install pytest-asyncio), "
    'and set asyncio_mode = "auto" in the pytest configuration'
)

ENVIRONMENT_VARIABLE = "AQUEUE_TEST_BROKER"

Drain = Callable[..., Awaitable[None]]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("aqueue")
    group.addoption(
        "--aqueue-broker",
        choices=("memory", "rabbitmq"),
        default=None,
        help=f"broker of the aqueue_broker fixture (default: ${ENVIRONMENT_VARIABLE} or memory)",
    )


def _broker_kind(config: pytest.Config) -> str:
    kind = config.getoption("--aqueue-broker") or os.environ.get(ENVIRONMENT_VARIABLE, "memory")
    if kind not in ("memory", "rabbitmq"):
        raise pytest.UsageError(f"{ENVIRONMENT_VARIABLE} must be memory or rabbitmq, not {kind!r}")
    return str(kind)


@contextlib.contextmanager
def _as_default_broker(broker: Broker) -> Iterator[None]:
    previous = _default_broker.broker
    moved = [] if previous is None else list(previous.actors.values())
    for actor in moved:
        actor.broker = broker
        broker.actors.setdefault(actor.actor_name, actor)
    set_broker(broker)
    try:
        yield
    finally:
        for actor in moved:
            assert previous is not None
            actor.broker = previous
        _default_broker.broker = previous


if pytest_asyncio is not None:

    @pytest_asyncio.fixture
    async def aqueue_broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
        """A broker for this test (in-memory by default), the default broker meanwhile."""
        broker: Broker
        if _broker_kind(request.config) == "rabbitmq":
            broker = RabbitmqBroker()
        else:
            broker = InMemoryBroker()
        # Its join also waits for the delayed messages this test sends (RabbitMQ holds them
        # out of the queue meanwhile), so aqueue_drain() does.
        broker._join_waits_for_delays = True
        with _as_default_broker(broker):
            try:
                yield broker
            finally:
                await broker.close()

    @pytest_asyncio.fixture
    async def aqueue_worker(aqueue_broker: Broker) -> AsyncIterator[Worker]:
        """A worker running every queue of ``aqueue_broker``'s actors during the test."""
        worker = Worker(aqueue_broker, shutdown_timeout=5)
        await worker.start()
        try:
            yield worker
        finally:
            await worker.stop()

    @pytest.fixture
    def aqueue_drain(aqueue_broker: Broker) -> Drain:
        """``await aqueue_drain(timeout=10, fail_fast=True)``: wait for every queue to be idle."""

        async def drain(*, timeout: float | None = 10.0, fail_fast: bool = True) -> None:
            options: dict[str, Any] = {"timeout": timeout, "fail_fast": fail_fast}
            if isinstance(aqueue_broker, InMemoryBroker):
                options["fast_forward"] = True
            await aqueue_broker.join_all(**options)

        return drain

else:
    # Fixtures that exist, so that asking for one says what is missing.

    def _missing_pytest_asyncio(name: str) -> NoReturn:
        pytest.fail(f"{name}: {MISSING_PYTEST_ASYNCIO}", pytrace=False)

    @pytest.fixture(name="aqueue_broker")
    def _aqueue_broker_unavailable() -> None:
        _missing_pytest_asyncio("aqueue_broker")

    @pytest.fixture(name="aqueue_worker")
    def _aqueue_worker_unavailable() -> None:
        _missing_pytest_asyncio("aqueue_worker")

    @pytest.fixture(name="aqueue_drain")
    def _aqueue_drain_unavailable() -> None:
        _missing_pytest_asyncio("aqueue_drain")
