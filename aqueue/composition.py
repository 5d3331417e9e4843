"""Workflows of messages: pipelines (one step after another) and groups (in parallel, then
a completion callback).

Both travel in message options, under Dramatiq's names for pipelines (``pipe_target``,
``pipe_ignore``), so a worker that crashes or restarts loses nothing: the next step, or
what the group runs once complete, is in the message it is working on. The worker side is
:class:`~aqueue.middleware.Pipelines` and :class:`~aqueue.middleware.Groups`.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from ._default_broker import get_broker
from ._durations import Duration, to_seconds
from ._groups import DEFAULT_GROUP_EXPIRY, GROUP, GroupMember
from .errors import ValidationError
from .message import Message

if TYPE_CHECKING:
    from .actor import Actor
    from .broker import Broker

__all__ = [
    "GROUP",
    "PIPE_IGNORE",
    "PIPE_TARGET",
    "Group",
    "Pipeline",
    "convert_nested_options",
    "group",
    "is_pipe_ignored",
    "pipeline",
]

#: The option holding the next step of a pipeline: a whole message, as a dict.
PIPE_TARGET = "pipe_target"
#: The option of a step that does not receive the result of the step before.
PIPE_IGNORE = "pipe_ignore"


class Pipeline:
    """Messages that run one after another, each given the result of the one before.

    Build it with :func:`pipeline`. Each step's return value is appended to the next step's
    positional arguments (unless that step has the option ``pipe_ignore=True``). The worker
    that ran a step publishes the next one, confirmed, before it acks the step.

    Attributes:
        broker: The broker the pipeline is sent with.
        messages: The steps, in order, as given (without ``pipe_target``).
    """

    def __init__(
        self, steps: Iterable[Message | Pipeline], *, broker: Broker | None = None
    ) -> None:
        self.broker = get_broker() if broker is None else broker
        messages: list[Message] = []
        for step in steps:
            if isinstance(step, Pipeline):
                messages.extend(step.messages)
            elif isinstance(step, Message):
                messages.append(step)
            else:
                raise ValidationError(
                    f"a pipeline step must be a Message (actor.message(...)) or a pipeline, "
                    f"not {type(step).__name__}"
                )
        if not messages:
            raise ValidationError("a pipeline needs at least one step")
        _require_option(self.broker, PIPE_TARGET, "Pipelines", "pipeline")
        for index, message in enumerate(messages):
            _check_step(self.broker, index, message)
        self.messages: list[Message] = messages

    def __len__(self) -> int:
        return len(self.messages)

    def __or__(self, other: Message | Pipeline) -> Pipeline:
        """A new pipeline with ``other`` (a message or a pipeline) added at the end."""
        return Pipeline([self, other], broker=self.broker)

    def __repr__(self) -> str:
        return f"pipeline([{', '.join(m.actor_name for m in self.messages)}])"

    def first_message(self) -> Message:
        """The first step, carrying the rest of the chain in its ``pipe_target`` option."""
        target: dict[str, Any] | None = None
        built = self.messages[-1]
        for message in reversed(self.messages):
            options = copy.deepcopy(message.options)
            if target is not None:
                options[PIPE_TARGET] = target
            built = msgspec.structs.replace(message, options=options)
            target = built.asdict()
        return built

    async def send(self, *, delay: Duration | None = None) -> Pipeline:
        """Publish the first step (after ``delay`` seconds if given); returns once confirmed.

        Raises:
            ValidationError: the chain is larger than the broker's ``max_message_size``.
            BrokerConnectionError, PublishError: as for ``send()``.
        """
        await self.broker.enqueue(self.first_message(), delay=_seconds(delay))
        return self


def pipeline(steps: Iterable[Message | Pipeline], *, broker: Broker | None = None) -> Pipeline:
    """Chain messages: each step runs once the one before succeeded, with its result.

    ``await aqueue.pipeline([fetch.message(url), parse.message(), store.message()]).send()``:
    ``parse`` receives what ``fetch`` returned as its last positional argument, ``store``
    what ``parse`` returned. A step built with ``pipe_ignore=True``
    (``actor.message_with_options(args=..., pipe_ignore=True)``) runs with its own arguments
    only. Steps may be on different queues and be blocking actors. A step that fails for
    good (after its retries) ends the pipeline: the steps after it never run.

    Args:
        steps: Messages (``actor.message(...)``) or pipelines, joined in order.
        broker: The broker whose actors the messages name (default: :func:`aqueue.get_broker`).

    Raises:
        ValidationError: a step's arguments do not fit its actor, counting the result it
            receives from the step before; a step is not a message; the broker has no
            ``Pipelines`` middleware.
        ActorNotFound: a step names an actor the broker does not have.
    """
    return Pipeline(steps, broker=broker)


class Group:
    """Messages that run in parallel, with callbacks once all finished.

    Build it with :func:`group`.

    Attributes:
        broker: The broker the group is sent with.
        messages: The members, in order.
        on_complete: The message sent once every member succeeded (the list of their
            results appended to its positional arguments), or None.
        on_failure: The message sent once instead if a member fails for good, or None.
        group_id: A new id per :meth:`send`.
    """

    def __init__(
        self,
        messages: Iterable[Message],
        *,
        on_complete: Message | None = None,
        on_failure: Message | None = None,
        expires: Duration = DEFAULT_GROUP_EXPIRY,
        broker: Broker | None = None,
    ) -> None:
        self.broker = get_broker() if broker is None else broker
        self.messages = list(messages)
        if not self.messages:
            raise ValidationError("a group needs at least one message")
        try:
            self.expires = to_seconds(expires, name="expires", allow_zero=False)
        except ValueError as exc:
            raise ValidationError(f"group: {exc}") from None
        if on_complete is not None or on_failure is not None:
            _require_option(self.broker, GROUP, "Groups", "group callbacks")
        for index, message in enumerate(self.messages):
            if not isinstance(message, Message):
                raise ValidationError(
                    f"a group member must be a Message (actor.message(...)), "
                    f"not {type(message).__name__}"
                )
            if GROUP in message.options or PIPE_TARGET in message.options:
                raise ValidationError(
                    f"group member {index + 1} is already in a group or a pipeline "
                    "(groups of pipelines are not supported)"
                )
            _check_arguments(self.broker, message, f"group member {index + 1}", piped=False)
        for name, callback in (("on_complete", on_complete), ("on_failure", on_failure)):
            if callback is not None and not isinstance(callback, Message):
                raise ValidationError(
                    f"{name} must be a Message (actor.message(...)), not {type(callback).__name__}"
                )
        if on_complete is not None:
            _check_arguments(self.broker, on_complete, "on_complete", piped=True)
        if on_failure is not None:
            _check_arguments(self.broker, on_failure, "on_failure", piped=False)
        self.on_complete = on_complete
        self.on_failure = on_failure
        self.group_id = ""

    def __len__(self) -> int:
        return len(self.messages)

    def member_messages(self, group_id: str) -> list[Message]:
        """The members as sent for the group ``group_id``: each carries the group option."""
        size = len(self.messages)
        callbacks = {
            "on_complete": None if self.on_complete is None else self.on_complete.asdict(),
            "on_failure": None if self.on_failure is None else self.on_failure.asdict(),
        }
        members = []
        for index, message in enumerate(self.messages):
            options = copy.deepcopy(message.options)
            if self.on_complete is not None or self.on_failure is not None:
                member = GroupMember(
                    id=group_id, index=index, size=size, expires=self.expires, **callbacks
                )
                options[GROUP] = msgspec.to_builtins(member)
            members.append(msgspec.structs.replace(message, options=options))
        return members

    async def send(self) -> Group:
        """Publish every member with pipelined confirms; return once all were confirmed.

        Raises:
            BrokerConnectionError, PublishError: as for ``send_many()`` (members may have
                been queued; a group sent again is a new group).
        """
        self.group_id = uuid.uuid4().hex
        await self.broker.enqueue_many(self.member_messages(self.group_id))
        return self


def group(
    messages: Iterable[Message],
    *,
    on_complete: Message | None = None,
    on_failure: Message | None = None,
    expires: Duration = DEFAULT_GROUP_EXPIRY,
    broker: Broker | None = None,
) -> Group:
    """Run messages in parallel; once all succeeded, send ``on_complete`` with their results.

    ``await aqueue.group([resize.message(p) for p in photos], on_complete=notify.message(user))
    .send()``: ``notify`` runs once, after every resize succeeded, with the list of their
    results, in member order, as its last positional argument. If a member fails for good
    (after its retries), ``on_complete`` never runs, and ``on_failure`` (if given) runs once
    with its own arguments. RabbitMQ alone keeps the group's state (see the "Results and
    workflows" page).

    Args:
        messages: The members (``actor.message(...)``).
        on_complete: The message to send once all succeeded; its last positional argument
            is left out (the results fill it).
        on_failure: The message to send if a member fails for good.
        expires: How long the group's state may stay unused on RabbitMQ before it is
            deleted (default one day): it must be longer than the time between two members
            finishing.
        broker: The broker whose actors the messages name (default: :func:`aqueue.get_broker`).

    Raises:
        ValidationError: a member's or a callback's arguments do not fit its actor; the
            broker has no ``Groups`` middleware.
        ActorNotFound: a message names an actor the broker does not have.
    """
    return Group(
        messages, on_complete=on_complete, on_failure=on_failure, expires=expires, broker=broker
    )


def convert_nested_options(
    options: dict[str, Any], convert: Callable[[dict[str, Any]], None]
) -> None:
    """Apply ``convert`` to the options of the messages nested in ``options`` (the next
    pipeline step, a group's callbacks), replacing each with a converted copy."""
    target = options.get(PIPE_TARGET)
    if isinstance(target, dict):
        options[PIPE_TARGET] = _converted(target, convert)
    member = options.get(GROUP)
    if isinstance(member, dict):
        member = dict(member)
        for name in ("on_complete", "on_failure"):
            if isinstance(member.get(name), dict):
                member[name] = _converted(member[name], convert)
        options[GROUP] = member


def _converted(message: dict[str, Any], convert: Callable[[dict[str, Any]], None]) -> Any:
    options = message.get("options")
    if not isinstance(options, dict):
        return message
    options = dict(options)
    convert(options)
    return {**message, "options": options}


def _check_step(broker: Broker, index: int, message: Message) -> None:
    if PIPE_TARGET in message.options:
        raise ValidationError(
            f"pipeline step {index + 1} ({message.actor_name}) has a pipe_target already; "
            "join pipelines by passing them as steps"
        )
    actor = broker.get_actor(message.actor_name)
    piped = index > 0 and not is_pipe_ignored(message, actor)
    _check_arguments(broker, message, f"pipeline step {index + 1}", piped=piped, actor=actor)


def is_pipe_ignored(message: Message, actor: Actor[Any, Any] | None) -> bool:
    """Whether the step ``message`` (of ``actor``, if known here) ignores the result before."""
    if PIPE_IGNORE in message.options:
        return bool(message.options[PIPE_IGNORE])
    return actor is not None and bool(actor.options.get(PIPE_IGNORE, False))


def _check_arguments(
    broker: Broker,
    message: Message,
    what: str,
    *,
    piped: bool,
    actor: Actor[Any, Any] | None = None,
) -> None:
    actor = broker.get_actor(message.actor_name) if actor is None else actor
    try:
        actor.arguments.check(message.args, message.kwargs, piped=piped)
    except ValidationError as exc:
        hint = (
            " (counting, as its last positional argument, the result it receives; give it "
            "pipe_ignore=True to run it with its own arguments only)"
            if piped
            else ""
        )
        raise ValidationError(f"{what} ({message.actor_name}): {exc}{hint}") from None


def _require_option(broker: Broker, option: str, middleware: str, what: str) -> None:
    if option not in broker.actor_options:
        raise ValidationError(
            f"{what} need the {middleware} middleware in the broker's stack "
            f"(aqueue.middleware.{middleware}, part of the default one)"
        )


def _seconds(delay: Duration | None) -> float | None:
    if delay is None:
        return None
    try:
        return to_seconds(delay, name="delay")
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
