"""RabbitMQ 4.x rules: what aqueue declares passes them, and the server version is kept.

The audit reads back, with rabbitmqctl, what a classic and a quorum broker declared on the
running node (work queues, ``.XQ``, both delay trees) and fails on anything RabbitMQ 4.3
would refuse. A control declares two queues 4.3 refuses, through the same reader and check.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest

import aqueue
from aqueue._scheduler import lease_queue_name, status_queue_name
from aqueue.brokers.rabbitmq.server import (
    consumer_timeout_action,
    default_delivery_limit,
    parse_version,
    refused_by_rabbitmq_4_3,
    server_version_of,
)
from aqueue.topology import (
    DELAY_LEVELS,
    QUEUE_TYPES,
    dead_letter_queue_arguments,
    delay_level_arguments,
    delay_level_name,
    queue_arguments,
)

from .conftest import RABBITMQ_URL, RabbitAdmin, unique_name


def declared_queues() -> dict[str, dict[str, Any]]:
    """Every queue of the default vhost as rabbitmqctl lists it: name, durable, exclusive,
    auto_delete and arguments."""
    out = subprocess.run(
        [
            "rabbitmqctl",
            "-q",
            "list_queues",
            "name",
            "durable",
            "exclusive",
            "auto_delete",
            "arguments",
            "--formatter",
            "json",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    queues = {}
    for row in json.loads(out):
        queues[row["name"]] = {
            # Quorum queues list exclusive as "" (they cannot be exclusive).
            "durable": row["durable"] in (True, "true"),
            "exclusive": row["exclusive"] in (True, "true"),
            "auto_delete": row["auto_delete"] in (True, "true"),
            "arguments": {key: value for key, _type, value in row["arguments"]},
        }
    return queues


def refusals(queue: dict[str, Any]) -> list[str]:
    return refused_by_rabbitmq_4_3(
        durable=queue["durable"], exclusive=queue["exclusive"], arguments=queue["arguments"]
    )


# -- the rules, as pure functions -------------------------------------------------------------


def test_the_rules_name_what_rabbitmq_4_3_refuses() -> None:
    assert refused_by_rabbitmq_4_3(durable=False, exclusive=False, arguments={}) == [
        "transient non-exclusive queue (denied by default since 4.3)"
    ]
    assert refused_by_rabbitmq_4_3(durable=False, exclusive=True, arguments={}) == []
    assert refused_by_rabbitmq_4_3(
        durable=True, exclusive=False, arguments={"x-queue-mode": "lazy"}
    ) == ["x-queue-mode (lazy mode removed; declaring it fails since 4.3)"]
    assert refused_by_rabbitmq_4_3(durable=True, exclusive=False, arguments={"x-queue-version": 1})
    assert not refused_by_rabbitmq_4_3(
        durable=True, exclusive=False, arguments={"x-queue-version": 2}
    )
    assert refused_by_rabbitmq_4_3(
        durable=True, exclusive=False, arguments={"x-consumer-timeout": 60000}
    )
    assert not refused_by_rabbitmq_4_3(
        durable=True,
        exclusive=False,
        arguments={"x-queue-type": "quorum", "x-consumer-timeout": 60000},
    )


@pytest.mark.parametrize("queue_type", QUEUE_TYPES)
def test_every_argument_aqueue_declares_passes_the_4_3_rules(queue_type: Any) -> None:
    declared = [
        queue_arguments("q", queue_type),
        queue_arguments("q", queue_type, delivery_limit=20),
        dead_letter_queue_arguments(queue_type),
        *(delay_level_arguments(level, queue_type) for level in range(DELAY_LEVELS)),
    ]
    for arguments in declared:
        assert refused_by_rabbitmq_4_3(durable=True, exclusive=False, arguments=arguments) == []


def test_versions_are_read_from_server_properties() -> None:
    assert parse_version("3.10.8") == (3, 10, 8)
    assert parse_version(b"4.3.0-rc.1") == (4, 3, 0)
    assert parse_version("4.1") == (4, 1, 0)
    assert parse_version("unknown") is None
    assert server_version_of({"product": "RabbitMQ", "version": "4.2.1"}) == (4, 2, 1)
    assert server_version_of({"product": b"RabbitMQ", "version": b"3.13.7"}) == (3, 13, 7)
    assert server_version_of({"product": "LavinMQ", "version": "2.0.0"}) is None
    assert server_version_of({}) is None


def test_what_differs_by_version_is_decided_for_both() -> None:
    # Quorum queues declared without x-delivery-limit: no limit up to 3.13, 20 from 4.0.
    assert default_delivery_limit((3, 13, 7)) is None
    assert default_delivery_limit((4, 0, 0)) == 20
    assert default_delivery_limit(None) == 20
    # A consumer timeout: the channel closed up to 4.2; from 4.3 the consumer of a quorum
    # queue is cancelled and classic queues do not time out.
    assert consumer_timeout_action((3, 10, 8), "classic") == "channel closed"
    assert consumer_timeout_action((4, 2, 0), "quorum") == "channel closed"
    assert consumer_timeout_action((4, 3, 0), "quorum") == "consumer cancelled"
    assert consumer_timeout_action((4, 3, 2), "classic") == "none"


# -- against the running node -----------------------------------------------------------------


@pytest.fixture
async def brokers() -> AsyncIterator[dict[str, aqueue.RabbitmqBroker]]:
    made = {kind: aqueue.RabbitmqBroker(RABBITMQ_URL, queue_type=kind) for kind in QUEUE_TYPES}
    try:
        yield made
    finally:
        for broker in made.values():
            await broker.close()


async def test_nothing_aqueue_declares_on_the_node_would_be_refused_by_rabbitmq_4_3(
    brokers: dict[str, aqueue.RabbitmqBroker], rabbit: RabbitAdmin
) -> None:
    names = {}
    for kind, broker in brokers.items():
        name = names[kind] = unique_name(f"rules-{kind}")
        rabbit.created.add(name)

        @broker.actor(queue_name=name, actor_name=f"work_{kind}")
        async def work() -> None:
            pass

        # The scheduler's lease queue (single active consumer) and status queue too.
        aqueue.schedule(work, every=0.2, name=name)
        rabbit.created.update({lease_queue_name(name), status_queue_name(name)})
        await work.send()
        await work.send_with_options(delay=0.05)  # declares the delay tree of its type
        async with aqueue.Worker(broker, queues=[name]):  # and what consuming declares
            await asyncio.sleep(0.5)
            await broker.join(name, timeout=10)

    queues = await asyncio.to_thread(declared_queues)
    expected = {
        *names.values(),
        *(name + ".XQ" for name in names.values()),
        *(lease_queue_name(name) for name in names.values()),
        *(status_queue_name(name) for name in names.values()),
        *(delay_level_name(level, kind) for kind in QUEUE_TYPES for level in range(DELAY_LEVELS)),
    }
    assert expected <= set(queues), f"not on the node: {sorted(expected - set(queues))}"
    refused = {name: refusals(queues[name]) for name in sorted(expected) if refusals(queues[name])}
    assert refused == {}
    for name in expected:
        assert queues[name]["durable"] and not queues[name]["auto_delete"], name
    # The delivery limit is declared, not left to the server (none on 3.x, 20 on 4.x).
    assert queues[names["quorum"]]["arguments"]["x-delivery-limit"] == 20
    assert queues[names["quorum"]]["arguments"]["x-queue-type"] == "quorum"
    # The lease lives in a quorum queue on a quorum broker: leadership survives a node.
    assert queues[lease_queue_name(names["quorum"])]["arguments"]["x-queue-type"] == "quorum"


async def test_the_audit_catches_queues_that_rabbitmq_4_3_refuses(rabbit: RabbitAdmin) -> None:
    transient, lazy = unique_name("rules-transient"), unique_name("rules-lazy")
    async with rabbit.connection.channel() as channel:
        await channel.declare_queue(transient, durable=False)
        await channel.declare_queue(lazy, durable=True, arguments={"x-queue-mode": "lazy"})
    try:
        queues = await asyncio.to_thread(declared_queues)
        assert refusals(queues[transient]) == [
            "transient non-exclusive queue (denied by default since 4.3)"
        ]
        assert refusals(queues[lazy]) == [
            "x-queue-mode (lazy mode removed; declaring it fails since 4.3)"
        ]
    finally:
        await rabbit.delete(transient, lazy)


async def test_the_broker_keeps_the_server_version_read_at_connect(
    rabbitmq_broker: aqueue.RabbitmqBroker,
) -> None:
    assert rabbitmq_broker.server_version is None
    await rabbitmq_broker.connect()
    out = await asyncio.to_thread(
        subprocess.run,
        ["rabbitmqctl", "-q", "version"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rabbitmq_broker.server_version == parse_version(out.stdout.strip())
    connection = await aio_pika.connect(RABBITMQ_URL)
    try:
        transport = connection.transport
        assert transport is not None
        properties = transport.connection.server_properties
        assert rabbitmq_broker.server_version == parse_version(properties["version"])
    finally:
        await connection.close()


async def test_a_quorum_queue_without_a_delivery_limit_says_what_4_x_does(
    rabbit: RabbitAdmin, caplog: pytest.LogCaptureFixture
) -> None:
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL, queue_type="quorum", delivery_limit=None)
    names = [unique_name("rules-nolimit") for _ in range(2)]
    rabbit.created.update(names)
    caplog.set_level(logging.INFO, logger="aqueue.brokers.rabbitmq")
    try:
        await broker.connect()
        version = broker.server_version
        assert version is not None
        await broker.declare_queue(names[0])
        told = [r for r in caplog.records if "without a delivery limit" in r.getMessage()]
        # 3.x: no limit, nothing to say; 4.x: RabbitMQ's default of 20 applies, said once.
        assert len(told) == (0 if version < (4, 0, 0) else 1)
        broker._publishing.server_version = (4, 3, 0)  # as if the node were 4.3
        await broker.declare_queue(names[1])
        told = [r for r in caplog.records if "without a delivery limit" in r.getMessage()]
        assert len(told) == 1
        assert "RabbitMQ 4.3.0 applies its default of 20 deliveries" in told[0].getMessage()
        queues = await asyncio.to_thread(declared_queues)
        assert "x-delivery-limit" not in queues[names[1]]["arguments"]
    finally:
        await broker.close()
