"""pytest fixtures for testing code that uses aqueue (registered as a ``pytest11`` plugin).

Installing aqueue makes these fixtures available; suites that do not ask for them are
not affected:

* ``aqueue_broker``: a broker for the test, in-memory unless the run asks for RabbitMQ
  (``--aqueue-broker=rabbitmq`` or ``AQUEUE_TEST_BROKER=rabbitmq``; the URL comes from
  ``AQUEUE_BROKER_URL``). It is the default broker during the test, and the actors of
  the previous default broker (those declared with ``@aqueue.actor``) are moved onto
  it for the test, so application code runs unchanged. On RabbitMQ every test has
  queues of its own: an actor's queue ``q`` is ``q.pytest-<8 hex digits>`` during the
  test, and those queues (and their ``.XQ``) are deleted after it, so no message, retry
  or dead letter of one test or run reaches another.
* ``aqueue_worker``: a running :class:`~aqueue.Worker` for ``aqueue_broker``.
* ``aqueue_drain``: ``await aqueue_drain()`` waits until every queue is idle, re-raising
  the first actor failure. It waits for the delayed messages the test sent, and for
  retries; with the in-memory broker delays and retry backoffs are skipped.

The fixtures run on pytest-asyncio (``pip install 'aqueue[pytest]'``). Without it a test
asking for one of them fails with a message saying so, instead of "fixture not found".
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, NoReturn

import aio_pika
import aiormq
import pytest

from . import _default_broker
from ._url import redact_url
from .actor import Actor
from .broker import Broker, set_broker
from .brokers.memory import InMemoryBroker
from .brokers.rabbitmq import RabbitmqBroker
from .errors import ActorDefinitionError
from .topology import MAX_NAME_BYTES, dead_letter_queue_name, validate_queue_name
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
#: Marks the queue names of a test on RabbitMQ: ``emails`` becomes ``emails.pytest-1a2b3c4d``.
TEST_QUEUE_MARK = ".pytest-"

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


def pytest_report_header(config: pytest.Config) -> str | None:
    if _broker_kind(config) != "rabbitmq":
        return None
    return (
        f"aqueue: RabbitMQ at {redact_url(RabbitmqBroker().url)}, "
        f"each test on queues of its own (<queue>{TEST_QUEUE_MARK}<id>)"
    )


def _isolated_queue_name(queue_name: str, test_id: str) -> str:
    """The name queue ``queue_name`` has during the test ``test_id`` on RabbitMQ."""
    isolated = f"{queue_name}{TEST_QUEUE_MARK}{test_id}"
    if len(isolated.encode()) > MAX_NAME_BYTES:
        raise ActorDefinitionError(
            f"queue name {queue_name[:40]!r}... is too long for a test on RabbitMQ, where it "
            f"gets {TEST_QUEUE_MARK}{test_id} added (at most {MAX_NAME_BYTES} bytes in all): "
            "give it a shorter name"
        )
    return validate_queue_name(isolated)


class _TestRabbitmqBroker(RabbitmqBroker):
    """A RabbitmqBroker whose actors use queues of this test's own, deleted afterwards.

    Delayed messages and retries wait in delay queues that every queue of the vhost
    shares, so they cannot be purged per queue; a queue name no other test uses is what
    keeps them out of other tests. When one is due after its queue was deleted,
    RabbitMQ finds no queue for it and drops it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.test_id = uuid.uuid4().hex[:8]
        self._renamed: list[tuple[Actor[Any, Any], str]] = []
        self._declared: set[str] = set()

    def isolate(self, actor: Actor[Any, Any]) -> None:
        """Give ``actor`` this test's name of its queue, until :meth:`restore_names`."""
        if all(actor is not done for done, _ in self._renamed):
            renamed = _isolated_queue_name(actor.queue_name, self.test_id)
            self._renamed.append((actor, actor.queue_name))
            actor.queue_name = renamed

    def restore_names(self) -> None:
        for actor, queue_name in reversed(self._renamed):
            actor.queue_name = queue_name
        self._renamed.clear()

    def register(self, actor: Actor[Any, Any]) -> None:
        super().register(actor)  # an actor declared during the test, on this broker
        self.isolate(actor)

    async def declare_queue(self, queue_name: str) -> None:
        self._declared.add(queue_name)
        await super().declare_queue(queue_name)

    async def delete_test_queues(self) -> None:
        """Delete the queues of this test this broker declared, and their dead letters."""
        mine = sorted(q for q in self._declared if q.endswith(TEST_QUEUE_MARK + self.test_id))
        if not mine:
            return
        # On a connection of its own: the broker offers no way to delete a queue.
        connection = await _connect_any(self.urls, timeout=self.connect_timeout)
        async with connection, connection.channel() as channel:
            for queue_name in mine:
                await channel.queue_delete(queue_name)
                await channel.queue_delete(dead_letter_queue_name(queue_name))
        self._declared.difference_update(mine)


async def _connect_any(urls: Sequence[str], *, timeout: float) -> aio_pika.abc.AbstractConnection:
    """A plain connection to the first of ``urls`` that answers."""
    for url in urls[:-1]:
        with contextlib.suppress(OSError, asyncio.TimeoutError, aiormq.exceptions.AMQPError):
            return await aio_pika.connect(url, timeout=timeout)
    return await aio_pika.connect(urls[-1], timeout=timeout)


@contextlib.contextmanager
def _as_default_broker(broker: Broker) -> Iterator[None]:
    previous = _default_broker.broker
    moved = [] if previous is None else list(previous.actors.values())
    for actor in moved:
        actor.broker = broker
        broker.actors.setdefault(actor.actor_name, actor)
    schedules = [] if previous is None else list(previous.schedules.items())
    for name, schedule in schedules:  # the worker fixture runs them (fast_forward fires them)
        broker.schedules.setdefault(name, schedule)
    set_broker(broker)
    try:
        if isinstance(broker, _TestRabbitmqBroker):
            for actor in list(broker.actors.values()):
                broker.isolate(actor)
        yield
    finally:
        if isinstance(broker, _TestRabbitmqBroker):
            broker.restore_names()
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
            broker = _TestRabbitmqBroker()
        else:
            broker = InMemoryBroker()
        # Its join also waits for the delayed messages this test sends (RabbitMQ holds them
        # out of the queue meanwhile), so aqueue_drain() does.
        broker._join_waits_for_delays = True
        with _as_default_broker(broker):
            try:
                yield broker
            finally:
                try:
                    if isinstance(broker, _TestRabbitmqBroker):
                        await broker.delete_test_queues()
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
