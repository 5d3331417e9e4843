"""OpenTelemetry: one trace from send() through the worker, with the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import aqueue
from aqueue.middleware.opentelemetry import TRACE_CONTEXT_OPTION, OpenTelemetry

from .conftest import RABBITMQ_URL


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.clear()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
async def two_brokers(
    provider: TracerProvider,
) -> AsyncIterator[tuple[aqueue.RabbitmqBroker, aqueue.RabbitmqBroker]]:
    """A sending service's broker and a worker's broker: two connections, as two processes."""
    sender = aqueue.RabbitmqBroker(RABBITMQ_URL)
    worker = aqueue.RabbitmqBroker(RABBITMQ_URL)
    for broker in (sender, worker):
        broker.add_middleware(OpenTelemetry(tracer_provider=provider))
    try:
        yield sender, worker
    finally:
        await sender.close()
        await worker.close()


def by_name(spans: tuple[ReadableSpan, ...] | list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id


async def wait_for(predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_one_trace_spans_send_and_process(
    two_brokers: tuple[aqueue.RabbitmqBroker, aqueue.RabbitmqBroker],
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    queue_name: str,
) -> None:
    sender, worker = two_brokers
    tracer = provider.get_tracer("test")

    @worker.actor(queue_name=queue_name)
    async def greet(name: str) -> None:
        with tracer.start_as_current_span("inside the actor"):
            pass

    send_greet = sender.actor(actor_name="greet", queue_name=queue_name)(greet.fn)

    with tracer.start_as_current_span("request"):
        message = await send_greet.send("Ada")
    assert set(message.options[TRACE_CONTEXT_OPTION]) >= {"traceparent"}

    async with aqueue.Worker(worker, queues=[queue_name]):
        await wait_for(lambda: len(exporter.get_finished_spans()) == 4)

    spans = exporter.get_finished_spans()
    (request,) = by_name(spans, "request")
    (send,) = by_name(spans, "send greet")
    (process,) = by_name(spans, "process greet")
    (inside,) = by_name(spans, "inside the actor")
    assert {trace_id(span) for span in spans} == {trace_id(request)}
    assert parent_of(send) == span_id(request)
    assert parent_of(process) == span_id(send)
    assert parent_of(inside) == span_id(process)
    assert send.kind == SpanKind.PRODUCER
    assert process.kind == SpanKind.CONSUMER
    assert process.attributes is not None
    assert process.attributes["messaging.message.id"] == message.message_id
    assert process.attributes["messaging.destination.name"] == queue_name
    assert process.status.status_code == StatusCode.UNSET
    assert send.end_time is not None and process.start_time is not None
    assert send.end_time <= process.start_time


async def test_retries_and_failures_stay_in_the_trace(
    two_brokers: tuple[aqueue.RabbitmqBroker, aqueue.RabbitmqBroker],
    exporter: InMemorySpanExporter,
    queue_name: str,
) -> None:
    sender, worker = two_brokers

    @worker.actor(queue_name=queue_name, max_retries=1, min_backoff=0.01, max_backoff=0.01)
    async def flaky() -> None:
        raise RuntimeError("always")

    await sender.actor(actor_name="flaky", queue_name=queue_name)(flaky.fn).send()
    async with aqueue.Worker(worker, queues=[queue_name]):
        await wait_for(lambda: len(by_name(exporter.get_finished_spans(), "process flaky")) == 2)
        await worker.join(queue_name, timeout=30)

    spans = exporter.get_finished_spans()
    (first_send, retry_send) = sorted(by_name(spans, "send flaky"), key=lambda s: s.start_time or 0)
    (first, second) = sorted(by_name(spans, "process flaky"), key=lambda s: s.start_time or 0)
    assert len({trace_id(span) for span in spans}) == 1
    assert parent_of(first_send) is None
    assert parent_of(first) == span_id(first_send)
    assert parent_of(retry_send) == span_id(first)  # the retry was sent while processing
    assert parent_of(second) == span_id(retry_send)
    for span in (first, second):
        assert span.status.status_code == StatusCode.ERROR
        assert [event.name for event in span.events] == ["exception"]
    assert first.attributes is not None and first.attributes["aqueue.retry_scheduled"] is True
    assert second.attributes is not None and second.attributes["aqueue.retry_scheduled"] is False
    assert second.attributes["aqueue.retries"] == 1


async def test_without_a_trace_context_the_worker_starts_a_trace(
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    make_broker: Callable[..., aqueue.Broker],
    queue_name: str,
) -> None:
    # The sender has no OpenTelemetry middleware; the worker (either broker kind) has.
    broker = make_broker()

    @broker.actor(queue_name=queue_name)
    async def plain() -> None:
        assert trace.get_current_span().get_span_context().is_valid

    await broker.enqueue(aqueue.Message(queue_name=queue_name, actor_name="plain"))
    broker.add_middleware(OpenTelemetry(tracer_provider=provider))
    async with aqueue.Worker(broker, queues=[queue_name]):
        await wait_for(lambda: len(exporter.get_finished_spans()) == 1)
    (process,) = exporter.get_finished_spans()
    assert process.name == "process plain"
    assert process.parent is None
    assert process.status.status_code == StatusCode.UNSET


def test_opentelemetry_is_not_imported_by_aqueue() -> None:
    code = "import sys, aqueue, aqueue.cli; print('opentelemetry' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
