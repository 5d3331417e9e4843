"""Declaring queues and the delay levels once, even under concurrent first sends.

Everything declared here passes RabbitMQ 4.3's rules (durable, no ``x-queue-mode``, no
``x-queue-version``, no ``x-consumer-timeout``): see ``server.refused_by_rabbitmq_4_3``
and the table in docs/deployment.md.

A queue that exists with other arguments is refused by RabbitMQ (``PRECONDITION_FAILED``).
That is reported as one :class:`~aqueue.BrokerError` line naming the queue, the argument
and both values (``clashes.py``). With ``dramatiq_compat``, queues are declared as Dramatiq
declares them (``q.XQ`` with its 7-day TTL, ``q.DQ`` too), so that either may declare
first; a queue that differs only in what Dramatiq alone sets (``x-max-priority``, the
``.XQ`` TTL) is used as it is, with a warning, after checking nothing else differs.

Priorities: a classic work queue gets ``x-max-priority``, the highest ``max_priority`` of
its actors (``max_priorities``); a quorum queue gets none, and on RabbitMQ before 4.0,
which has no priorities for quorum queues, declaring one whose actors set
``max_priority`` raises :class:`~aqueue.BrokerError` naming them. A process in which no
actor of a queue sets ``max_priority`` uses an existing priority queue as it is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiormq

from ...errors import BrokerConnectionError, BrokerError
from ...topology import (
    DELAY_LEVELS,
    DELIVERY_EXCHANGE,
    DRAMATIQ_DELAY_SUFFIX,
    QueueType,
    dead_letter_queue_arguments,
    dead_letter_queue_name,
    delay_level_arguments,
    delay_level_bindings,
    delay_level_name,
    delivery_binding_key,
    dramatiq_dead_letter_arguments,
    dramatiq_delay_queue_name,
    dramatiq_queue_arguments,
    queue_arguments,
)
from .clashes import adopt, describe_clash, dramatiq_adoptable, parse_clash
from .errors import CONNECTION_ERRORS, describe_error
from .server import ServerVersion, default_delivery_limit, format_version

log = logging.getLogger("aqueue.brokers.rabbitmq")

# Channel errors that are RabbitMQ's answer to this declaration, not a lost connection.
_REFUSALS = (
    aiormq.exceptions.ChannelAccessRefused,
    aiormq.exceptions.ChannelNotFoundEntity,
    aiormq.exceptions.ChannelLockedResource,
)

_DELAYS = "aqueue.delay."  # key prefix in Declarations._done; no queue has such a name
#: The first RabbitMQ whose quorum queues prioritise messages (two levels, no x-max-priority).
QUORUM_PRIORITIES_SINCE: ServerVersion = (4, 0, 0)
#: How many differing arguments a compat broker adopts on one queue before it gives up.
_MAX_ADOPTIONS = 4


class Declarations:
    """What this process declared on RabbitMQ, so that each thing is declared once.

    Forgotten after a reconnect (the new node may lack non-replicated state) and after
    a publish was returned as unroutable (a queue deleted behind our back).
    """

    def __init__(
        self,
        channel: Callable[[], Awaitable[aiormq.abc.AbstractChannel]],
        *,
        queue_type_of: Callable[[str], QueueType],
        delivery_limit: int | None,
        timeout: float,
        describe_node: Callable[[], str],
        server_version: Callable[[], ServerVersion | None] = lambda: None,
        dramatiq_compat: bool = False,
        max_priority: int | None = None,
        max_priorities: Callable[[str], Mapping[str, int]] = lambda queue_name: {},
    ) -> None:
        self._channel = channel
        #: The ``max_priority`` of each actor of a queue that sets one, by actor name.
        self._max_priorities = max_priorities
        self._queue_type_of = queue_type_of
        self._delivery_limit = delivery_limit
        self._timeout = timeout
        self._describe_node = describe_node
        self._server_version = server_version
        self._told_default_limit = False
        #: Declare classic queues as Dramatiq does, and adopt what only Dramatiq sets.
        self.dramatiq_compat = dramatiq_compat
        #: Dramatiq's ``max_priority`` (``x-max-priority``), with ``dramatiq_compat``.
        self.max_priority = max_priority
        # Declarations done or under way, shared so that concurrent first sends declare once.
        self._done: dict[str, asyncio.Future[None]] = {}

    def clear(self) -> None:
        """Declare everything again on next use."""
        self._done.clear()

    def forget_queue(self, queue_name: str) -> None:
        """Declare ``queue_name`` (and its delay levels) again on next use."""
        self._done.pop(queue_name, None)
        self._done.pop(_DELAYS + self._queue_type_of(queue_name), None)

    async def queue(self, queue_name: str) -> None:
        """Declare ``queue_name``, its dead-letter queue and its delivery binding, once."""
        await self._once(queue_name, lambda: self._declare_queue(queue_name))

    async def queue_again(self, queue_name: str) -> None:
        """Declare ``queue_name`` even if this process declared it before."""
        self._done.pop(queue_name, None)
        await self.queue(queue_name)

    async def delay_levels(self, queue_type: QueueType) -> None:
        """Declare the shared delay levels of ``queue_type``, once."""
        await self._once(_DELAYS + queue_type, lambda: self._declare_delay_levels(queue_type))

    def _declaring(self, key: str, declare: Callable[[], Awaitable[None]]) -> asyncio.Future[None]:
        """The declaration of ``key``, under way or done; started if there is none (a
        failed one is forgotten, to be made again)."""
        done = self._done.get(key)
        if done is None:
            done = asyncio.ensure_future(declare())
            self._done[key] = done

            def forget_failure(future: asyncio.Future[None]) -> None:
                if (future.cancelled() or future.exception()) and self._done.get(key) is future:
                    del self._done[key]

            done.add_done_callback(forget_failure)
        return done

    async def _once(self, key: str, declare: Callable[[], Awaitable[None]]) -> None:
        done = self._done.get(key)
        if done is not None and done.done() and not done.cancelled() and done.exception() is None:
            return  # declared already: the path of every send
        # Bounded like a publish: while the connection is down, or lost in the middle of
        # a declaration, this waits for it and declares again, until the timeout.
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                await asyncio.wait_for(
                    asyncio.shield(self._declaring(key, declare)),
                    max(deadline - time.monotonic(), 0.001),
                )
                return
            except asyncio.TimeoutError:
                raise BrokerConnectionError(
                    f"RabbitMQ at {self._describe_node()} did not answer within "
                    f"{self._timeout} s while declaring {key!r}"
                ) from None
            except aiormq.exceptions.ChannelPreconditionFailed as exc:
                clash = parse_clash(exc)
                if clash is not None:
                    raise BrokerError(
                        describe_clash(clash, dramatiq_compat=self.dramatiq_compat)
                    ) from None
                raise BrokerError(
                    f"RabbitMQ refused to declare {key!r} as aqueue does (it exists with "
                    f"other arguments, e.g. another queue type): {exc}"
                ) from None
            except CONNECTION_ERRORS as exc:
                # BrokerError: connect() itself gave up, after its own attempts.
                if isinstance(exc, (*_REFUSALS, BrokerError)) or time.monotonic() >= deadline:
                    raise BrokerConnectionError(
                        f"lost RabbitMQ at {self._describe_node()} while declaring {key!r}: "
                        f"{describe_error(exc)}"
                    ) from None
                log.debug("declaring %r interrupted (%r); declaring again", key, exc)
                await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    async def _declare_queue(self, queue_name: str) -> None:
        kind = self._queue_type_of(queue_name)
        compat = self.dramatiq_compat and kind == "classic"
        if compat and queue_name.endswith(DRAMATIQ_DELAY_SUFFIX):
            # Dramatiq's delay queue, consumed on its own: it dead-letters to the work
            # queue's .XQ, as Dramatiq declares it.
            work_queue = queue_name[: -len(DRAMATIQ_DELAY_SUFFIX)]
            max_priority = self._compat_max_priority(work_queue)
            await self._declare(queue_name, dramatiq_queue_arguments(work_queue, max_priority))
            return
        priorities = self._max_priorities(queue_name)
        if kind == "quorum" and priorities:
            self._check_quorum_priorities(queue_name, priorities)
        if compat:
            max_priority = self._compat_max_priority(queue_name)
            arguments = dramatiq_queue_arguments(queue_name, max_priority)
            dead_letter_arguments = dramatiq_dead_letter_arguments()
        else:
            arguments = queue_arguments(
                queue_name,
                kind,
                delivery_limit=self._delivery_limit,
                max_priority=max(priorities.values(), default=None),
            )
            dead_letter_arguments = dead_letter_queue_arguments(kind)
        if kind == "quorum" and self._delivery_limit is None:
            self._tell_default_limit(queue_name)
        # One answer at a time, so that a clash (a queue that exists with other arguments)
        # is reported as such.
        await self._declare(dead_letter_queue_name(queue_name), dead_letter_arguments)
        await self._declare(queue_name, arguments, priorities_known=bool(priorities))
        if compat:
            await self._declare(dramatiq_delay_queue_name(queue_name), arguments)
        channel = await self._open_channel()
        await channel.exchange_declare(DELIVERY_EXCHANGE, exchange_type="topic", durable=True)
        await channel.queue_bind(
            queue_name, DELIVERY_EXCHANGE, routing_key=delivery_binding_key(queue_name)
        )

    def _compat_max_priority(self, queue_name: str) -> int | None:
        """``x-max-priority`` of a queue shared with Dramatiq: the highest of Dramatiq's
        ``max_priority`` and the queue's actors' (so that a Dramatiq broker declaring it
        with the same ``max_priority`` agrees)."""
        values = [*self._max_priorities(queue_name).values()]
        if self.max_priority:
            values.append(self.max_priority)
        return max(values, default=None)

    def _check_quorum_priorities(self, queue_name: str, priorities: Mapping[str, int]) -> None:
        """Refuse priorities on a quorum queue of a RabbitMQ without them (before 4.0)."""
        version = self._server_version()
        if version is None or version >= QUORUM_PRIORITIES_SINCE:
            return  # 4.0+: native priorities, without x-max-priority
        actors = ", ".join(f"{name!r} (max_priority={n})" for name, n in sorted(priorities.items()))
        who = f"actor {actors} sets" if len(priorities) == 1 else f"actors {actors} set"
        raise BrokerError(
            f"queue {queue_name!r} is a quorum queue, and quorum queues have no message "
            f"priorities on RabbitMQ {format_version(version)} (they have from "
            f"{format_version(QUORUM_PRIORITIES_SINCE)}): {who} max_priority. "
            f"Make the queue classic (queue_types={{{queue_name!r}: 'classic'}}), remove "
            "max_priority, or upgrade RabbitMQ"
        )

    async def _declare(
        self, queue_name: str, arguments: dict[str, Any], *, priorities_known: bool = True
    ) -> None:
        """Declare one durable queue; with ``dramatiq_compat``, adopt what Dramatiq set.

        With ``priorities_known`` False (no actor of the queue here sets ``max_priority``:
        an ops command, a producer that does not import them), a queue that exists as a
        priority queue is used as it is: its priorities are its actors' business.
        """
        arguments = dict(arguments)
        for _ in range(_MAX_ADOPTIONS):
            channel = await self._open_channel()
            try:
                await channel.queue_declare(queue_name, durable=True, arguments=arguments)
                return
            except aiormq.exceptions.ChannelPreconditionFailed as exc:
                clash = parse_clash(exc)
                if (
                    clash is not None
                    and not priorities_known
                    and clash.argument == "x-max-priority"
                    and clash.received is None
                ):
                    log.debug(
                        "queue %s is a priority queue (x-max-priority=%s); no actor of it here "
                        "sets max_priority: using it as it is",
                        queue_name,
                        clash.current,
                    )
                    adopt(arguments, clash)
                    continue
                if not (
                    clash is not None
                    and self.dramatiq_compat
                    and dramatiq_adoptable(queue_name, clash.argument)
                ):
                    raise
                log.warning(
                    "queue %s exists with %s=%s where this broker declares %s; using it as it "
                    "is (dramatiq_compat)%s",
                    queue_name,
                    clash.argument,
                    "none" if clash.current is None else clash.current,
                    "none" if clash.received is None else clash.received,
                    ""
                    if clash.current is not None
                    else "; a Dramatiq broker will refuse to declare it until it is deleted and "
                    "declared again",
                )
                adopt(arguments, clash)
        raise BrokerError(
            f"queue {queue_name!r} differs in more than {_MAX_ADOPTIONS} arguments from "
            "what this broker declares"
        )

    async def _open_channel(self) -> aiormq.abc.AbstractChannel:
        # A refused declaration closes the channel; the robust channel opens it again soon
        # after (the caller bounds the wait).
        while True:
            channel = await self._channel()
            if not channel.is_closed:
                return channel
            await asyncio.sleep(0.02)

    def _tell_default_limit(self, queue_name: str) -> None:
        # delivery_limit=None declares no x-delivery-limit: what that means is the server's.
        version = self._server_version()
        limit = default_delivery_limit(version)
        if limit is None or self._told_default_limit:
            return
        self._told_default_limit = True
        log.info(
            "quorum queue %s is declared without a delivery limit (delivery_limit=None): "
            "RabbitMQ %s applies its default of %d deliveries, then dead-letters the message",
            queue_name,
            format_version(version),
            limit,
        )

    async def _declare_delay_levels(self, queue_type: QueueType) -> None:
        channel = await self._channel()
        # Pipelined: commands on a channel run in order, and a failing one closes the
        # channel, so the last (waited-for) answer vouches for all of them.
        await channel.exchange_declare(
            DELIVERY_EXCHANGE, exchange_type="topic", durable=True, nowait=True
        )
        for level in range(DELAY_LEVELS):
            name = delay_level_name(level, queue_type)
            lower = delay_level_name(level - 1, queue_type) if level else DELIVERY_EXCHANGE
            to_queue, to_lower = delay_level_bindings(level)
            await channel.exchange_declare(name, exchange_type="topic", durable=True, nowait=True)
            await channel.queue_declare(
                name, durable=True, arguments=delay_level_arguments(level, queue_type), nowait=True
            )
            await channel.queue_bind(name, name, routing_key=to_queue, nowait=True)
            await channel.exchange_bind(lower, name, routing_key=to_lower, nowait=True)
        await channel.queue_declare(delay_level_name(DELAY_LEVELS - 1, queue_type), passive=True)
