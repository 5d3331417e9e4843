"""Run a group's completion callback once every member succeeded (``aqueue.group``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from .._groups import (
    GROUP,
    GroupMember,
    GroupOutcome,
    failure_record,
    member_of,
    result_record,
)
from ..context import MessageContext
from ..errors import ValidationError
from ..message import Message
from .base import Middleware

__all__ = ["Groups"]

if TYPE_CHECKING:
    from ..broker import Broker

log = logging.getLogger(__name__)


class Groups(Middleware):
    """Record each group member's final outcome; the member that decides the group sends
    ``on_complete`` (with the results, in member order) or ``on_failure``.

    The outcome counts once it is final: a success, or a failure with no retry left (so it
    comes after ``Retries`` in the stack), or a skip to the dead-letter queue. The record,
    and the callback when this member decides the group, are published before the member
    is acked. A result that cannot be encoded as JSON fails the member. How the broker
    keeps the group's state is in :mod:`aqueue._groups`.

    Message option (set by :func:`aqueue.group`, not meant to be set by hand):
        group: The member's group, index, size and the callbacks.
    """

    actor_options: ClassVar[frozenset[str]] = frozenset({GROUP})

    def normalize_option(self, name: str, value: Any) -> Any:
        if value is None:
            return None
        member_of(value)
        return value

    async def after_process_message(self, context: MessageContext) -> None:
        option = context.message.options.get(GROUP)
        if option is None or context.retry_scheduled:
            return
        member = member_of(option)
        if context.exception is None:
            try:
                record = result_record(member.index, context.result)
            except (TypeError, ValueError) as exc:
                # The member fails: dead-lettered with this error as its reason.
                context.exception = ValidationError(
                    f"actor {context.actor.actor_name} returned a value that cannot be kept "
                    f"as a group result: {exc}"
                )
                record = failure_record(member.index, _describe(context.exception))
        else:
            record = failure_record(member.index, _describe(context.exception))
        await _settle(context.broker, member, record)

    async def after_skip_message(self, context: MessageContext) -> None:
        option = context.message.options.get(GROUP)
        skip = context.skip
        if option is not None and skip is not None and skip.dead_letter:
            member = member_of(option)
            await _settle(context.broker, member, failure_record(member.index, skip.reason))

    async def after_reject_message(
        self, broker: Broker, message: Message, error: Exception, reason: str
    ) -> None:
        # A member this worker cannot run (its actor unknown here, its arguments invalid)
        # fails for good: without its record the group would wait until it expires.
        option = message.options.get(GROUP)
        if option is None:
            return
        try:
            member = member_of(option)
        except ValueError as exc:
            log.error("message %s has an invalid group option: %s", message.message_id, exc)
            return
        record = failure_record(member.index, f"{reason}: {_describe(error)}")
        await _settle(broker, member, record)


async def _settle(broker: Broker, member: GroupMember, record: bytes) -> None:
    async def publish(outcome: GroupOutcome) -> None:
        await _publish(broker, member, outcome)

    await broker.settle_group_member(member, record, publish)


async def _publish(broker: Broker, member: GroupMember, outcome: GroupOutcome) -> None:
    if outcome.results is not None:
        callback, name = member.on_complete, "on_complete"
    else:
        callback, name = member.on_failure, "on_failure"
    if callback is None:
        return
    message = msgspec.convert(callback, Message)
    if outcome.results is not None:
        results = [msgspec.json.decode(raw) for raw in outcome.results]
        message = msgspec.structs.replace(message, args=(*message.args, results))
    try:
        await broker.enqueue(message)
    except ValidationError as exc:
        # It can never be published (too large, say): retrying would not help.
        log.error("%s of group %s could not be sent: %s", name, member.id, exc)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
