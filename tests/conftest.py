"""Fixtures for tests against the real RabbitMQ on 127.0.0.1:5672."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import pytest

import aqueue

pytest_plugins = ["pytester"]

RABBITMQ_URL = os.environ.get("AQUEUE_TEST_URL", "amqp://guest:guest@127.0.0.1:5672/")


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class RabbitAdmin:
    """A separate connection for looking at and cleaning up queues from tests."""

    def __init__(self, connection: aio_pika.abc.AbstractConnection) -> None:
        self.connection = connection
        self.created: set[str] = set()

    async def count(self, queue_name: str) -> int:
        async with self.connection.channel() as channel:
            queue = await channel.declare_queue(queue_name, passive=True)
            return int(queue.declaration_result.message_count or 0)

    async def get(self, queue_name: str) -> aio_pika.abc.AbstractIncomingMessage | None:
        """Take one message off a queue (acked), or None when it is empty."""
        async with self.connection.channel() as channel:
            queue = await channel.declare_queue(queue_name, passive=True)
            message = await queue.get(fail=False)
            if message is not None:
                await message.ack()
            return message

    async def publish_raw(
        self, queue_name: str, body: bytes, headers: dict[str, object] | None = None
    ) -> None:
        async with self.connection.channel() as channel:
            await channel.default_exchange.publish(
                aio_pika.Message(body, headers=headers),
                routing_key=queue_name,  # type: ignore[arg-type]
            )

    async def delete(self, *queue_names: str) -> None:
        async with self.connection.channel() as channel:
            for name in queue_names:
                await channel.queue_delete(name)


@pytest.fixture
async def rabbit() -> AsyncIterator[RabbitAdmin]:
    connection = await aio_pika.connect(RABBITMQ_URL)
    admin = RabbitAdmin(connection)
    try:
        yield admin
    finally:
        for name in admin.created:
            await admin.delete(name, name + ".XQ")
        await connection.close()


@pytest.fixture
def queue_name(rabbit: RabbitAdmin) -> str:
    """A queue name of this test's own; it and its dead-letter queue are deleted afterwards."""
    name = unique_name("q")
    rabbit.created.add(name)
    return name


@pytest.fixture
def make_queue_name(rabbit: RabbitAdmin) -> Callable[[], str]:
    def make() -> str:
        name = unique_name("q")
        rabbit.created.add(name)
        return name

    return make


@pytest.fixture(params=["rabbitmq", "memory"])
def broker_kind(request: pytest.FixtureRequest) -> str:
    """Behaviour tests run against both brokers, so the in-memory one cannot drift."""
    return str(request.param)


@pytest.fixture
async def make_broker(broker_kind: str) -> AsyncIterator[Callable[..., aqueue.Broker]]:
    """Build brokers of this test's kind (with a custom middleware stack, say); closed after."""
    made: list[aqueue.Broker] = []

    def make(**options: Any) -> aqueue.Broker:
        b: aqueue.Broker
        if broker_kind == "rabbitmq":
            b = aqueue.RabbitmqBroker(RABBITMQ_URL, **options)
        else:
            b = aqueue.InMemoryBroker(**options)
        made.append(b)
        return b

    try:
        yield make
    finally:
        for b in made:
            await b.close()


@pytest.fixture
def broker(make_broker: Callable[..., aqueue.Broker]) -> aqueue.Broker:
    """A broker of each kind in turn: RabbitMQ and in-memory."""
    return make_broker()


@pytest.fixture
async def rabbitmq_broker() -> AsyncIterator[aqueue.RabbitmqBroker]:
    """A RabbitMQ broker, for tests of what only RabbitMQ has (connections, raw bodies, ...)."""
    b = aqueue.RabbitmqBroker(RABBITMQ_URL)
    try:
        yield b
    finally:
        await b.close()


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout


def restart_rabbitmq(down_for: float) -> None:
    """Stop the default node's app for ``down_for`` seconds; it is started again whatever
    happens (blocking: run it in a thread)."""
    rabbitmqctl("stop_app")
    try:
        time.sleep(down_for)
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")


def _is_aqueue_connection_of(pid: int, line: str, role: str | None = None) -> bool:
    roles = "publish|consume|publish\\+consume" if role is None else re.escape(role)
    pattern = f'"aqueue ({roles}) {re.escape(socket.gethostname())} pid {pid}"'
    return re.search(pattern, line) is not None


def connections_of_pid(pid: int, role: str | None = None) -> int:
    """How many AMQP connections process ``pid`` holds (of ``role``: aqueue names each
    connection ``aqueue <role> <host> pid <pid>``)."""
    out = rabbitmqctl("list_connections", "client_properties")
    return sum(1 for line in out.splitlines() if _is_aqueue_connection_of(pid, line, role))


def channels_of_pid(pid: int) -> int:
    """How many channels the connections of process ``pid`` have open."""
    out = rabbitmqctl("list_connections", "client_properties", "channels")
    return sum(
        int(line.rsplit("\t", 1)[1])
        for line in out.splitlines()
        if _is_aqueue_connection_of(pid, line)
    )
