"""Bound how often a message may come back after its worker died (poison messages)."""

from __future__ import annotations

import random
from typing import Any, ClassVar

import msgspec

from ..context import MessageContext
from .base import Middleware, SkipMessage

__all__ = ["Redeliveries"]

REDELIVERY_LIMIT = "redelivery-limit"
MAX_REDELIVERY_DELAY = 60.0


class Redeliveries(Middleware):
    """Dead-letter a message that keeps coming back without ever finishing.

    RabbitMQ redelivers a message whose worker died before acking it (a crash, an
    OOM kill, ``os._exit``, a lost connection). A message that kills its worker
    every time would come back forever. Classic queues do not count deliveries, so
    this middleware counts: a redelivered message is published again with
    ``options["redeliveries"]`` one higher, after ``2**n * uniform(0.5, 1)`` seconds
    (at most 60; confirmed before the redelivery is acked), and once the count passes
    ``max_redeliveries`` the message is dead-lettered with reason ``redelivery-limit``
    instead of being run. Messages that were in flight when a poison message killed
    the worker are redelivered too and counted; the jittered wait separates them from
    it, so they normally finish before reaching the limit.

    A graceful stop does not count: the worker gives its unfinished messages back as
    new publishes (``Broker.give_back``), not marked redelivered. It counts only if
    that publish failed and the message was requeued instead. Nor does a lost
    connection, for the copies that come back to the same worker: it knows it held them
    (``MessageContext.redelivered`` is False for those).

    Actor option (per message too):
        max_redeliveries: Redeliveries allowed (default 5); None for no limit.
    """

    actor_options: ClassVar[frozenset[str]] = frozenset({"max_redeliveries"})

    def __init__(self, *, max_redeliveries: int | None = 5) -> None:
        self.max_redeliveries = self.normalize_option("max_redeliveries", max_redeliveries)

    def normalize_option(self, name: str, value: Any) -> Any:
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 0
        ):
            raise ValueError(f"max_redeliveries must be an int >= 0 or None, not {value!r}")
        return value

    async def before_process_message(self, context: MessageContext) -> None:
        if not context.redelivered:
            return
        limit = context.option("max_redeliveries", self.max_redeliveries)
        if limit is None:
            return
        message = context.message
        count = int(message.options.get("redeliveries", 0)) + 1
        context.failure_headers["x-aqueue-redeliveries"] = str(count)
        if count > limit:
            context.failure_headers["x-aqueue-error"] = (
                f"delivered {count + 1} times without finishing (max_redeliveries {limit})"
            )
            raise SkipMessage(REDELIVERY_LIMIT)
        counted = msgspec.structs.replace(
            message, options={**message.options, "redeliveries": count}
        )
        # Held back a while, with jitter: the ack of this delivery reaches RabbitMQ before
        # the copy can kill a worker again, and messages that died together with a poison
        # message (they were in flight with it) drift apart from it instead of dying again.
        delay = min(MAX_REDELIVERY_DELAY, 2.0**count * random.uniform(0.5, 1.0))
        await context.broker.enqueue(counted, delay=delay)
        context.broker._retry_scheduled(counted, delay)  # join() waits for it
        raise SkipMessage("redelivered", dead_letter=False)
