"""Declaring actors and validating what is sent to them."""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from typing import Any

import msgspec
import pytest

import aqueue
from aqueue.topology import MAX_NAME_BYTES


class Point(msgspec.Struct):
    x: int
    y: int


@dataclasses.dataclass
class Order:
    order_id: uuid.UUID
    placed_at: datetime.datetime


def test_actor_defaults_to_function_name_and_default_queue(broker: aqueue.Broker) -> None:
    @broker.actor
    async def resize(width: int) -> int:
        return width * 2

    assert resize.actor_name == "resize"
    assert resize.queue_name == "default"
    assert resize.concurrency is None
    assert broker.get_actor("resize") is resize


def test_actor_is_callable_directly(broker: aqueue.Broker) -> None:
    @broker.actor(queue_name="x")
    def double(n: int) -> int:
        return n * 2

    assert double(21) == 42


def test_module_level_decorator_uses_default_broker(broker: aqueue.Broker) -> None:
    previous = aqueue.get_broker()
    aqueue.set_broker(broker)
    try:

        @aqueue.actor(actor_name="custom", queue_name="reports", concurrency=3)
        async def make_report() -> None: ...

        assert aqueue.get_broker() is broker
        assert broker.actors["custom"] is make_report
        assert make_report.concurrency == 3
    finally:
        aqueue.set_broker(previous)


def test_unknown_option_is_an_error_at_decoration(broker: aqueue.Broker) -> None:
    with pytest.raises(aqueue.ActorDefinitionError, match=r"unknown option.*max_retriez"):

        @broker.actor(max_retriez=3)
        async def task() -> None: ...

    assert "task" not in broker.actors


@pytest.mark.parametrize(
    "name",
    [
        "",
        "has space",
        "bad/slash",
        "amq.reserved",
        "aqueue.delay",
        "x" * (MAX_NAME_BYTES + 1),
        "q.XQ",
    ],
)
def test_invalid_queue_names_are_rejected_at_decoration(broker: aqueue.Broker, name: str) -> None:
    with pytest.raises(aqueue.ActorDefinitionError):

        @broker.actor(queue_name=name)
        async def task() -> None: ...


@pytest.mark.parametrize("name", ["", "white space", "semi;colon", "é"])
def test_invalid_actor_names_are_rejected(broker: aqueue.Broker, name: str) -> None:
    with pytest.raises(aqueue.ActorDefinitionError, match="actor name"):

        @broker.actor(actor_name=name)
        async def task() -> None: ...


@pytest.mark.parametrize("concurrency", [0, -1, 1.5, True])
def test_concurrency_must_be_a_positive_int(broker: aqueue.Broker, concurrency: Any) -> None:
    with pytest.raises(aqueue.ActorDefinitionError, match="concurrency"):

        @broker.actor(concurrency=concurrency)
        async def task() -> None: ...


def test_two_functions_cannot_share_an_actor_name(broker: aqueue.Broker) -> None:
    @broker.actor(actor_name="same")
    async def one() -> None: ...

    with pytest.raises(aqueue.ActorDefinitionError, match="already registered"):

        @broker.actor(actor_name="same")
        async def two() -> None: ...


def test_generators_cannot_be_actors(broker: aqueue.Broker) -> None:
    with pytest.raises(aqueue.ActorDefinitionError, match="generator"):

        @broker.actor
        def gen() -> Any:
            yield 1


class Opaque:
    pass


def test_type_hints_that_cannot_travel_are_rejected(broker: aqueue.Broker) -> None:
    with pytest.raises(aqueue.ActorDefinitionError, match="cannot travel as JSON"):

        @broker.actor
        async def task(thing: Opaque) -> None: ...


def test_message_carries_dramatiq_field_names(broker: aqueue.Broker) -> None:
    @broker.actor(queue_name="emails")
    async def send_email(to: str, *, subject: str = "") -> None: ...

    message = send_email.message("a@example.com", subject="hi")
    wire = msgspec.json.decode(message.encode())
    assert set(wire) == {
        "queue_name",
        "actor_name",
        "args",
        "kwargs",
        "options",
        "message_id",
        "message_timestamp",
    }
    assert wire["queue_name"] == "emails"
    assert wire["actor_name"] == "send_email"
    assert wire["args"] == ["a@example.com"]
    assert wire["kwargs"] == {"subject": "hi"}
    assert isinstance(wire["message_id"], str)
    assert isinstance(wire["message_timestamp"], int)
    assert aqueue.Message.decode(message.encode()) == message


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("not a number",), {}, "argument 'count'.*Expected `int`, got `str`"),
        ((1, 2, 3), {}, "takes 2 positional arguments but 3 were given"),
        ((), {}, "missing the argument 'count'"),
        ((1,), {"count": 1}, "multiple values for argument 'count'"),
        ((1,), {"colour": "red"}, "unexpected argument 'colour'"),
        ((1,), {"point": {"x": 1}}, "argument 'point'.*missing required field `y`"),
        ((1,), {"when": "yesterday"}, "argument 'when'"),
        ((True,), {}, "argument 'count'"),
    ],
)
async def test_send_with_wrong_arguments_raises_and_publishes_nothing(
    broker: aqueue.Broker,
    queue_name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    match: str,
) -> None:
    @broker.actor(queue_name=queue_name)
    async def draw(
        count: int, point: Point | None = None, *, when: datetime.datetime | None = None
    ) -> None: ...

    await broker.declare_queue(queue_name)
    with pytest.raises(aqueue.ValidationError, match=match) as info:
        await draw.send(*args, **kwargs)
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, ValueError)
    assert await broker.ready_count(queue_name) == 0


def test_keyword_only_and_variadic_parameters(broker: aqueue.Broker) -> None:
    @broker.actor
    async def flexible(a: int, /, *rest: int, flag: bool, **extra: str) -> None: ...

    flexible.message(1, 2, 3, flag=True, note="x")
    with pytest.raises(aqueue.ValidationError, match="missing the argument 'flag'"):
        flexible.message(1)
    with pytest.raises(aqueue.ValidationError, match=r"argument '\*args'"):
        flexible.message(1, "two", flag=True)
    with pytest.raises(aqueue.ValidationError, match="argument 'note'"):
        flexible.message(1, flag=True, note=5)


async def test_send_with_options_rejects_unknown_options(broker: aqueue.Broker) -> None:
    @broker.actor
    async def task() -> None: ...

    with pytest.raises(aqueue.ValidationError, match="unknown option 'bogus'"):
        await task.send_with_options(bogus=1)


async def test_arguments_that_cannot_be_encoded_are_a_validation_error(
    broker: aqueue.Broker, queue_name: str
) -> None:
    @broker.actor(queue_name=queue_name)
    async def anything(value: Any) -> None: ...

    await broker.declare_queue(queue_name)
    with pytest.raises(aqueue.ValidationError, match="cannot be encoded as JSON"):
        await anything.send(object())
    assert await broker.ready_count(queue_name) == 0
