"""OpenTelemetry tracing from ``send()`` to the worker (needs the ``otel`` extra).

Import it only when you use it::

    from aqueue.middleware.opentelemetry import OpenTelemetry

    broker.add_middleware(OpenTelemetry())

Add it to the broker of the senders and to the broker of the workers. A ``send {actor}``
span (kind PRODUCER) covers each publish; its context is written into the message, in
``message.options["trace_context"]`` (W3C ``traceparent``/``tracestate`` and baggage,
through the configured propagator), and the worker runs the actor inside a
``process {actor}`` span (kind CONSUMER) that continues that trace. Spans the actor
makes are children of the process span, and so are retries it schedules.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from ..context import MessageContext
from .base import Middleware

if TYPE_CHECKING:
    from ..broker import Broker
    from ..message import Message

__all__ = ["TRACE_CONTEXT_OPTION", "OpenTelemetry"]

#: The key of ``message.options`` that carries the trace context.
TRACE_CONTEXT_OPTION = "trace_context"


class _Processing:
    __slots__ = ("callback", "span", "task", "token")

    def __init__(self, span: Span, token: object) -> None:
        self.span = span
        self.token = token
        self.task: asyncio.Task[Any] | None = None
        self.callback: Callable[[asyncio.Task[Any]], None] | None = None


class OpenTelemetry(Middleware):
    """Trace sending and processing of messages with OpenTelemetry.

    Args:
        tracer_provider: The provider of the tracer (default: the global one, set with
            ``opentelemetry.trace.set_tracer_provider``).
    """

    def __init__(self, *, tracer_provider: trace.TracerProvider | None = None) -> None:
        self.tracer = trace.get_tracer("aqueue", _version(), tracer_provider=tracer_provider)
        # The send span between before_enqueue and after_enqueue, which run in one task.
        self._sending: contextvars.ContextVar[tuple[Message, Span] | None] = contextvars.ContextVar(
            f"aqueue_otel_sending_{id(self)}", default=None
        )
        self._processing: dict[int, _Processing] = {}

    # -- sending ----------------------------------------------------------------------------

    async def before_enqueue(self, broker: Broker, message: Message, delay: float | None) -> None:
        previous = self._sending.get()
        if previous is not None:  # a publish of this task that failed
            _end_with_error(previous[1], "the message was not published")
        attributes: dict[str, Any] = {
            "messaging.system": "rabbitmq",
            "messaging.operation": "publish",
            "messaging.destination.name": message.queue_name,
            "messaging.message.id": message.message_id,
            "aqueue.actor": message.actor_name,
        }
        if delay:
            attributes["aqueue.delay_seconds"] = delay
        retries = message.options.get("retries")
        if retries:
            attributes["aqueue.retries"] = retries
        span = self.tracer.start_span(
            f"send {message.actor_name}", kind=SpanKind.PRODUCER, attributes=attributes
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        message.options[TRACE_CONTEXT_OPTION] = carrier
        self._sending.set((message, span))

    async def after_enqueue(self, broker: Broker, message: Message, delay: float | None) -> None:
        sending = self._sending.get()
        if sending is not None and sending[0] is message:
            self._sending.set(None)
            sending[1].end()

    # -- processing -------------------------------------------------------------------------

    async def before_process_message(self, context: MessageContext) -> None:
        message = context.message
        carrier = message.options.get(TRACE_CONTEXT_OPTION)
        parent = (
            propagate.extract(carrier, context=otel_context.Context())
            if isinstance(carrier, dict)
            else otel_context.Context()
        )
        attributes: dict[str, Any] = {
            "messaging.system": "rabbitmq",
            "messaging.operation": "process",
            "messaging.destination.name": message.queue_name,
            "messaging.message.id": message.message_id,
            "aqueue.actor": message.actor_name,
            "aqueue.redelivered": context.redelivered,
        }
        retries = message.options.get("retries")
        if retries:
            attributes["aqueue.retries"] = retries
        span = self.tracer.start_span(
            f"process {message.actor_name}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        processing = _Processing(span, token)
        key = id(context)
        self._processing[key] = processing
        # A message cancelled at shutdown gets no after-hook; its task's end closes the span.
        task = asyncio.current_task()
        if task is not None:
            processing.task = task
            processing.callback = lambda _task: self._abandon(key, processing)
            task.add_done_callback(processing.callback)

    async def after_process_message(self, context: MessageContext) -> None:
        processing = self._take(id(context))
        if processing is None:
            return
        span = processing.span
        exc = context.exception
        if exc is not None:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            span.set_attribute("aqueue.retry_scheduled", context.retry_scheduled)
        span.end()
        otel_context.detach(processing.token)  # type: ignore[arg-type]

    async def after_skip_message(self, context: MessageContext) -> None:
        processing = self._take(id(context))
        if processing is None:
            return  # skipped by a middleware before this one
        skip = context.skip
        if skip is not None:
            processing.span.set_attribute("aqueue.skipped", skip.reason)
            processing.span.set_attribute("aqueue.dead_lettered", skip.dead_letter)
        processing.span.end()
        otel_context.detach(processing.token)  # type: ignore[arg-type]

    def _take(self, key: int) -> _Processing | None:
        processing = self._processing.pop(key, None)
        if processing is not None and processing.task is not None:
            assert processing.callback is not None
            processing.task.remove_done_callback(processing.callback)
            processing.task = processing.callback = None
        return processing

    def _abandon(self, key: int, processing: _Processing) -> None:
        if self._processing.get(key) is processing:
            del self._processing[key]
            _end_with_error(processing.span, "processing was interrupted")


def _end_with_error(span: Span, description: str) -> None:
    span.set_status(Status(StatusCode.ERROR, description))
    span.end()


def _version() -> str:
    try:
        return version("aqueue")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"
