"""Hostile input: random bodies and headers thrown at a live worker, huge bodies, size limits.

Whatever arrives, the worker runs it (if it is a valid message for a known actor) or
dead-letters it with a reason, acks it either way, and keeps consuming. Messages are data:
nothing in a message is imported, unpickled or evaluated.
"""

from __future__ import annotations

import ast
import asyncio
import datetime
import decimal
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import aqueue

from .conftest import RABBITMQ_URL, RabbitAdmin, rabbitmqctl, unique_name

AQUEUE_SOURCE = Path(aqueue.__file__).resolve().parent

#: Option names the default middleware reads from a message, and counters it keeps there.
MIDDLEWARE_OPTIONS = (
    "max_retries",
    "min_backoff",
    "max_backoff",
    "retry_when",
    "throws",
    "time_limit",
    "max_age",
    "max_redeliveries",
    "on_success",
    "on_failure",
    "retries",
    "redeliveries",
    "first_failed_at",
)
#: Option names the random messages carry, the middleware's included: values of the wrong
#: type under those names are dead-lettered as invalid-arguments.
FUZZED_OPTIONS = ("eta", "pipe_target", "priority", "x-death", *MIDDLEWARE_OPTIONS)

DEAD_LETTER_REASONS = {"undecodable", "unknown-actor", "invalid-arguments", "too-large"}


async def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.01)


def unacked(queue_name: str) -> tuple[int, int]:
    """(ready, unacknowledged) of a queue, as RabbitMQ counts them."""
    out = rabbitmqctl("list_queues", "name", "messages_ready", "messages_unacknowledged")
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == queue_name:
            return int(parts[1]), int(parts[2])
    raise AssertionError(f"queue {queue_name} not found")


class LiveWorker:
    """A worker consuming one queue with two actors, and a raw publisher to that queue."""

    def __init__(self, broker: aqueue.RabbitmqBroker, queue_name: str) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self.ran: list[tuple[str, tuple[Any, ...]]] = []
        self.probes: set[str] = set()
        self.published = 0
        self.channel: aio_pika.abc.AbstractChannel | None = None

        @broker.actor(queue_name=queue_name, max_retries=0)
        async def target(n: int, text: str = "") -> None:
            self.ran.append(("target", (n, text)))

        @broker.actor(queue_name=queue_name, max_retries=0)
        async def probe(token: str) -> None:
            self.probes.add(token)

        self.probe = probe

    async def publish_raw(self, body: bytes, **properties: Any) -> None:
        """Publish with confirm, as a foreign producer would."""
        assert self.channel is not None
        await self.channel.default_exchange.publish(
            aio_pika.Message(body, **properties), routing_key=self.queue_name
        )
        self.published += 1

    async def dead_letter_count(self) -> int:
        info = await self.broker.queue_info(self.queue_name + ".XQ")
        return 0 if info is None else info.ready

    async def settled(self) -> int:
        """How many raw messages were run or dead-lettered so far."""
        return len(self.ran) + await self.dead_letter_count()

    async def check_still_consuming(self, timeout: float = 15.0) -> None:
        """Each raw message ends up run or dead-lettered, and a valid message still runs."""

        async def all_settled() -> bool:
            return await self.settled() == self.published

        await wait_until(all_settled, timeout, f"{self.published} raw messages settled")
        token = uuid.uuid4().hex
        await self.probe.send(token)
        await wait_until(self._probed(token), timeout, "a valid message processed")

        async def idle() -> bool:
            return self.broker._in_flight.get(self.queue_name, 0) == 0

        await wait_until(idle, timeout, "nothing in flight")
        assert await self.broker.ready_count(self.queue_name) == 0
        assert await self.settled() == self.published  # and nothing settled twice

    def _probed(self, token: str) -> Callable[[], Any]:
        async def check() -> bool:
            return token in self.probes

        return check


@pytest.fixture
async def live(
    rabbitmq_broker: aqueue.RabbitmqBroker, queue_name: str
) -> AsyncIterator[LiveWorker]:
    live = LiveWorker(rabbitmq_broker, queue_name)
    connection = await aio_pika.connect(RABBITMQ_URL)
    try:
        live.channel = await connection.channel()  # publisher confirms on
        async with aqueue.Worker(rabbitmq_broker, queues=[queue_name]):
            yield live
            # Once the worker is done with everything, RabbitMQ holds nothing unacked.
            await live.check_still_consuming()
            assert await asyncio.to_thread(unacked, queue_name) == (0, 0)
    finally:
        await connection.close()


# -- strategies -----------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)

# AMQP field-table values: what RabbitMQ and pamqp carry in headers.
header_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    # RabbitMQ closes the publisher's connection (INTERNAL_ERROR) for an infinite double.
    | st.floats(width=32, allow_nan=False, allow_infinity=False)  # pamqp packs them as "f"
    | st.text(max_size=200)
    | st.decimals(
        allow_nan=False, allow_infinity=False, places=2, max_value=10**6, min_value=-(10**6)
    )
    | st.datetimes(
        min_value=datetime.datetime(1970, 1, 2), max_value=datetime.datetime(2200, 1, 1)
    ).map(lambda d: d.replace(microsecond=0))
)
header_values = st.recursive(
    header_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(min_size=1, max_size=20), children, max_size=4)
    ),
    max_leaves=20,
)
header_keys = st.sampled_from(["x-death", "x-delay", "x-aqueue-reason", "x-first-death-queue"]) | (
    st.text(min_size=1, max_size=40)
)
header_tables = st.none() | st.dictionaries(header_keys, header_values, max_size=8)

option_values = json_values | st.sampled_from(
    [-1, -(10**20), 10**30, 1e308, -1e308, "1h", "os.system", [], {}, True, None]
)
options = st.dictionaries(
    st.sampled_from(FUZZED_OPTIONS)
    | st.text(max_size=10).filter(lambda name: name not in MIDDLEWARE_OPTIONS),
    option_values,
    max_size=4,
)
actor_names = st.sampled_from(
    ["target", "probe", "nobody", "os.system", "builtins:eval", "this", ""]
) | st.text(max_size=20)
target_args = st.one_of(
    st.tuples(st.integers(-(2**63), 2**63 - 1)).map(list),
    st.tuples(st.integers(-(2**63), 2**63 - 1), st.text(max_size=20)).map(list),
    st.lists(json_values, max_size=3),
)
# The fields of an aqueue message, each of the right type or of any JSON type, maybe missing.
message_fields: dict[str, st.SearchStrategy[Any]] = {
    # Only ever the queue under test: a retry goes to the queue its message names.
    "queue_name": st.just("QUEUE") | json_values.filter(lambda v: not isinstance(v, str)),
    "actor_name": actor_names | json_values,
    "args": target_args | json_values,
    "kwargs": st.dictionaries(st.sampled_from(["n", "text", "x"]), json_values, max_size=2)
    | json_values,
    "options": options | json_values,
    "message_id": st.uuids().map(str) | json_values,
    "message_timestamp": st.integers(-(2**64), 2**64) | json_values,
}
message_like = st.fixed_dictionaries(
    {},
    optional={
        **message_fields,
        "eta": json_values | st.integers(-(2**64), 2**64),
    },
).map(lambda d: json.dumps(d).encode())
# Mostly right: every field of the right type, the options hostile.
nearly_valid = st.builds(
    lambda actor_name, args, opts, ts: json.dumps(
        {
            "queue_name": "QUEUE",
            "actor_name": actor_name,
            "args": args,
            "kwargs": {},
            "options": opts,
            "message_id": str(uuid.uuid4()),
            "message_timestamp": ts,
        }
    ).encode(),
    st.sampled_from(["target", "nobody"]),
    target_args,
    options,
    st.integers(-(2**63), 2**63 - 1),
)
bodies = (
    st.binary(max_size=2000)
    | json_values.map(lambda v: json.dumps(v).encode())
    | message_like
    | nearly_valid
    | st.text(max_size=200).map(lambda t: t.encode("utf-16"))
)
properties = st.fixed_dictionaries(
    {"headers": header_tables},
    optional={
        "message_id": st.text(max_size=60),
        "content_type": st.text(max_size=30),
        "content_encoding": st.sampled_from(["gzip", "utf-16", "", "zstd"]),
        "correlation_id": st.text(max_size=30),
        "type": st.text(max_size=30),
        "priority": st.integers(0, 255),
        "delivery_mode": st.sampled_from([1, 2]),
    },
)


# -- the fuzz test ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
@settings(
    max_examples=150,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # a failing example waits out its timeouts
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies, props=properties)
async def test_random_bodies_never_stop_the_worker(
    live: LiveWorker, body: bytes, props: dict[str, Any]
) -> None:
    body = body.replace(b'"QUEUE"', json.dumps(live.queue_name).encode())
    await live.publish_raw(body, **props)
    await live.check_still_consuming()


# -- explicit cases --------------------------------------------------------------------------


def valid_body(queue_name: str, *args: Any, **options: Any) -> bytes:
    message = aqueue.Message(queue_name=queue_name, actor_name="target", args=args, options=options)
    return message.encode()


async def test_hostile_headers_are_ignored(live: LiveWorker) -> None:
    q = live.queue_name
    nested: Any = "bottom"
    for depth in range(40):
        nested = {f"level{depth}": nested, "list": [nested]} if depth < 8 else {"d": nested}
    hostile: list[dict[str, Any]] = [
        {"x-death": "garbage"},
        {"x-death": [{"count": "many", "queue": 7, "reason": None}, "not a table", 42]},
        {"x-death": [{"count": -1, "time": datetime.datetime(1970, 1, 2)}]},
        {f"k{i}": "v" * 20 for i in range(2000)},  # a large table (about 50 kB)
        {"nested": nested},
        {"x-aqueue-reason": "failed", "x-aqueue-retries": "abc", "x-delay": -5},
        {"": "\x00", "decimal": decimal.Decimal("-1.5"), "float": -0.0, "date": None},
    ]
    for number, headers in enumerate(hostile):
        await live.publish_raw(valid_body(q, number), headers=headers)
        await live.publish_raw(b"\xff not json", headers=headers)
    await live.check_still_consuming()
    assert sorted(args[0] for _, args in live.ran) == list(range(len(hostile)))
    letters = await live.broker.dead_letters(q, limit=len(hostile) + 1)
    assert [letter.reason for letter in letters] == ["undecodable"] * len(hostile)


async def test_negative_or_absurd_eta_and_timestamps(live: LiveWorker) -> None:
    q = live.queue_name

    def raw(**fields: Any) -> bytes:
        message = {
            "queue_name": q,
            "actor_name": "target",
            "args": [len(fields)],
            "kwargs": {},
            "options": {},
            "message_id": str(uuid.uuid4()),
            "message_timestamp": 0,
        }
        message.update(fields)
        return json.dumps(message).encode()

    # An "eta" (Dramatiq's option) means nothing to aqueue: delays are the broker's delay
    # queues. Whatever its value, the message runs now.
    for eta in (-1, -(2**63), 2**63 - 1, 10**30, 1e308, "tomorrow", None):
        await live.publish_raw(raw(options={"eta": eta}))
        await live.publish_raw(raw(eta=eta))
    # message_timestamp is only read by the age limit: any integer will do.
    for timestamp in (-1, -(2**63), 2**63 - 1, 2**64, 10**30):
        await live.publish_raw(raw(message_timestamp=timestamp))
    for timestamp in (1.5, "now", None):  # not an integer: not an aqueue message
        await live.publish_raw(raw(message_timestamp=timestamp))
    await live.check_still_consuming()
    assert len(live.ran) == 19
    letters = await live.broker.dead_letters(q)
    assert [letter.reason for letter in letters] == ["undecodable"] * 3


async def test_negative_or_absurd_eta_at_send(broker: aqueue.Broker, queue_name: str) -> None:
    """``eta`` is turned into a delay when sending; it never travels in the message."""
    ran: list[int] = []

    @broker.actor(queue_name=queue_name)
    async def at(n: int) -> None:
        ran.append(n)

    utc = datetime.timezone.utc
    with pytest.raises(aqueue.ValidationError, match="longer than the longest supported"):
        await at.send_with_options(args=(1,), eta=datetime.datetime(9999, 1, 1, tzinfo=utc))
    with pytest.raises(aqueue.ValidationError, match="timezone-aware"):
        await at.send_with_options(args=(2,), eta=datetime.datetime(2000, 1, 1))
    with pytest.raises(aqueue.ValidationError, match="eta must be a datetime"):
        await at.send_with_options(args=(3,), eta=-1.0)  # type: ignore[arg-type]
    with pytest.raises(aqueue.ValidationError, match="not both"):
        await at.send_with_options(args=(4,), eta=datetime.datetime.now(utc), delay=1)
    assert await broker.ready_count(queue_name) == 0
    message = await at.send_with_options(args=(5,), eta=datetime.datetime(1, 1, 1, tzinfo=utc))
    assert "eta" not in message.options and "eta" not in message.asdict()
    async with aqueue.Worker(broker, queues=[queue_name]):
        await broker.join(queue_name, timeout=10)
    assert ran == [5]  # long past: now


@pytest.mark.slow
@pytest.mark.parametrize(
    ("options", "redelivered"),
    [
        pytest.param({"time_limit": "soon"}, False),
        pytest.param({"max_age": "old"}, False),
        pytest.param({"max_retries": "many", "time_limit": "x"}, False),
        pytest.param({"retry_when": "os.system", "time_limit": "x"}, False),
        pytest.param({"throws": "ValueError", "time_limit": "x"}, False),
        pytest.param({"retries": "x", "time_limit": []}, False),
        pytest.param({"min_backoff": -5, "time_limit": {}}, False),
        pytest.param({"redeliveries": "x"}, True),
        pytest.param({"max_redeliveries": "x"}, True),
        # Counters read only after a failure or a redelivery: dead-lettered all the same.
        pytest.param({"retries": "x", "redeliveries": []}, False),
        ({"eta": "never", "x-death": 5}, True),  # unknown options are carried, not read
    ],
    ids=lambda value: ",".join(value) if isinstance(value, dict) else str(value).lower(),
)
async def test_hostile_options_are_dead_lettered_not_looped(
    rabbitmq_broker: aqueue.RabbitmqBroker,
    queue_name: str,
    options: dict[str, Any],
    redelivered: bool,
) -> None:
    """Per-message options of the wrong type: a dead letter, never a retry or requeue loop."""
    live = LiveWorker(rabbitmq_broker, queue_name)
    await rabbitmq_broker.declare_queue(queue_name)
    connection = await aio_pika.connect(RABBITMQ_URL)
    try:
        live.channel = await connection.channel()
        await live.publish_raw(valid_body(queue_name, 1, **options))
        if redelivered:  # as RabbitMQ does after a worker died holding it
            async with connection.channel() as channel:
                queue = await channel.get_queue(queue_name)
                taken = await queue.get(no_ack=False)
                assert taken is not None
        async with aqueue.Worker(rabbitmq_broker, queues=[queue_name]):
            # Dead-lettered or run at once; a correct worker takes milliseconds.
            await live.check_still_consuming(timeout=3)
        if any(name in MIDDLEWARE_OPTIONS for name in options):
            [letter] = await rabbitmq_broker.dead_letters(queue_name)
            assert letter.reason in ("invalid-arguments", "undecodable"), letter.headers
            assert live.ran == []
        else:
            assert live.ran == [("target", (1, ""))]
    finally:
        await connection.close()


@pytest.mark.slow
async def test_fifty_megabyte_body_is_dead_lettered_as_too_large(live: LiveWorker) -> None:
    size = 50 * 1024 * 1024
    body = b'{"queue_name": "' + b"x" * (size - 17)
    await live.publish_raw(body)
    await live.publish_raw(valid_body(live.queue_name, 1))
    await live.check_still_consuming(timeout=60)
    assert live.ran == [("target", (1, ""))]
    [letter] = await live.broker.dead_letters(live.queue_name)
    assert letter.reason == "too-large"
    assert f"{len(body)} bytes" in letter.headers["x-aqueue-error"]
    assert len(letter.body) == len(body)  # kept whole for inspection


async def test_max_message_size_is_enforced_at_receive(
    make_queue_name: Callable[[], str], rabbit: RabbitAdmin
) -> None:
    queue_name = make_queue_name()
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL, max_message_size=300)
    ran: list[str] = []

    @broker.actor(queue_name=queue_name)
    async def echo(text: str) -> None:
        ran.append(text)

    try:
        await broker.declare_queue(queue_name)
        big = aqueue.Message(queue_name=queue_name, actor_name="echo", args=("y" * 300,))
        await rabbit.publish_raw(queue_name, big.encode())
        await echo.send("small")
        async with aqueue.Worker(broker, queues=[queue_name]):
            await broker.join(queue_name, timeout=10)
        assert ran == ["small"]
        [letter] = await broker.dead_letters(queue_name)
        assert letter.reason == "too-large"
        assert "more than max_message_size (300 bytes)" in letter.headers["x-aqueue-error"]
    finally:
        await broker.close()


async def test_send_of_a_too_large_message_raises_and_publishes_nothing(
    make_broker: Callable[..., aqueue.Broker], broker_kind: str
) -> None:
    queue_name = unique_name("big")
    broker = make_broker()
    limited = make_broker(max_message_size=1000)
    assert broker.max_message_size == 1024 * 1024  # the default: 1 MiB

    async def upload(data: str) -> None: ...

    on_default = broker.actor(actor_name="upload", queue_name=queue_name)(upload)
    on_limited = limited.actor(actor_name="upload", queue_name=queue_name)(upload)
    try:
        with pytest.raises(aqueue.ValidationError, match=r"more than max_message_size \(1048576"):
            await on_default.send("z" * 1024 * 1024)
        with pytest.raises(aqueue.ValidationError, match=r"upload\(\): the message is \d+ bytes"):
            await on_limited.send("z" * 1000)
        with pytest.raises(aqueue.ValidationError, match="pass large data by reference"):
            await on_limited.send_with_options(args=("z" * 2000,), delay=60)
        # Nothing reached the broker: not even the queue was declared for it.
        info = await broker.queue_info(queue_name)
        assert info is None or info.ready == 0
        await on_limited.send("fits")
        assert await limited.ready_count(queue_name) == 1
    finally:
        if broker_kind == "rabbitmq":
            connection = await aio_pika.connect(RABBITMQ_URL)
            async with connection, connection.channel() as channel:
                await channel.queue_delete(queue_name)
                await channel.queue_delete(queue_name + ".XQ")
    with pytest.raises(ValueError, match="max_message_size"):
        make_broker(max_message_size=0)


async def test_unknown_actor_names_are_never_imported_or_looked_up(live: LiveWorker) -> None:
    names = ["this", "antigravity:fly", "os.system", "builtins.eval", "__import__", "aqueue.cli"]
    assert "this" not in sys.modules and "antigravity" not in sys.modules
    for name in names:
        body = json.dumps({"queue_name": live.queue_name, "actor_name": name, "args": ["x"]})
        await live.publish_raw(body.encode())
    await live.check_still_consuming()
    assert "this" not in sys.modules and "antigravity" not in sys.modules
    letters = await live.broker.dead_letters(live.queue_name)
    assert [letter.reason for letter in letters] == ["unknown-actor"] * len(names)
    assert [letter.actor_name for letter in letters] == names


# -- messages are data ------------------------------------------------------------------------

#: Modules that turn bytes into code or arbitrary objects.
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle"}
UNSAFE_MODULES |= {"jsonpickle", "yaml", "copyreg"}
UNSAFE_CALLS = {"eval", "exec", "compile", "__import__"}
#: Where aqueue imports modules by name: the CLI, from names given on its command line.
IMPORTS_BY_NAME = {"_loading.py", "_admin.py"}


def test_no_pickle_or_eval_anywhere_in_aqueue() -> None:
    files = sorted(AQUEUE_SOURCE.rglob("*.py"))
    assert len(files) > 20
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(AQUEUE_SOURCE)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported = {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported = {node.module or ""} | {f"{node.module}.{a.name}" for a in node.names}
            else:
                imported = set()
            for name in imported:
                top = name.split(".")[0]
                assert top not in UNSAFE_MODULES, f"{where}: imports {name}"
                # aio-pika's patterns (RPC, master/worker) pickle their payloads.
                assert not name.startswith("aio_pika.patterns"), f"{where}: imports {name}"
                if top == "importlib" and not name.startswith("importlib.metadata"):
                    assert path.name in IMPORTS_BY_NAME, f"{where}: imports {name}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in UNSAFE_CALLS, f"{where}:{node.lineno}: {node.func.id}"
            if isinstance(node, ast.Attribute) and node.attr in {"loads", "load"}:
                assert not (isinstance(node.value, ast.Name) and node.value.id in UNSAFE_MODULES), (
                    f"{where}:{node.lineno}"
                )


def test_importing_aqueue_imports_no_pickle_of_its_own() -> None:
    # aio-pika imports pickle for its RPC patterns, so pickle in sys.modules proves nothing;
    # what matters is that no aqueue module refers to it.
    code = (
        "import importlib, pkgutil, sys, aqueue\n"
        "for m in pkgutil.walk_packages(aqueue.__path__, 'aqueue.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "for name, module in list(sys.modules.items()):\n"
        "    if name.startswith('aqueue'):\n"
        "        for value in vars(module).values():\n"
        "            assert getattr(value, '__name__', '') not in ('pickle', '_pickle', 'marshal')"
        ", name\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.stdout.strip() == "ok", result.stderr
