"""Which queues RabbitMQ would refuse to declare as this broker does, found without
creating or changing any (for ``aqueue check``).

Without the management plugin, a passive declare tells whether a queue exists but not its
arguments. So each existing queue is declared again with this broker's arguments plus
:data:`PROBE_ARGUMENT`, a stream-only argument with a value RabbitMQ refuses: an existing
classic or quorum queue is compared on the arguments that matter (a difference is refused
with ``PRECONDITION_FAILED``, read by ``clashes.py``) and otherwise left as it is, while a
queue that went missing meanwhile is refused creation ("invalid arg") instead of being
created. Checked on RabbitMQ 3.10; each probe has a throwaway channel, since a refusal
closes it.

The arguments are the broker's own: its ``Declarations`` run against a channel that only
records what it is asked to declare, so the probe follows every rule of ``declarations.py``.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import aiormq

from .clashes import Clash, adopt, dramatiq_adoptable, parse_clash

if TYPE_CHECKING:
    from .broker import RabbitmqBroker
    from .declarations import Declarations

__all__ = ["PROBE_ARGUMENT", "QueueProbe", "planned_declarations", "probe_declarations"]

#: Valid only for streams, and then not as a number: never compared on other queues.
PROBE_ARGUMENT = ("x-max-age", 1)
_MAX_ADOPTIONS = 4


@dataclass(frozen=True)
class QueueProbe:
    """What declaring ``queue`` as the broker does would meet.

    Attributes:
        queue: The queue's name.
        exists: Whether it exists (nothing else is known when it does not).
        clash: The difference RabbitMQ would refuse the declaration on, if any.
        adopted: Differences a ``dramatiq_compat`` broker accepts (it uses the queue as
            it is, with a warning), e.g. Dramatiq's ``x-max-priority``.
    """

    queue: str
    exists: bool
    clash: Clash | None = None
    adopted: tuple[Clash, ...] = ()


class _RecordingChannel:
    """Stands in for a channel: records queue declarations, does nothing else."""

    is_closed = False

    def __init__(self) -> None:
        self.declared: list[tuple[str, dict[str, Any]]] = []

    async def queue_declare(
        self, queue: str, *, arguments: dict[str, Any] | None = None, **_: Any
    ) -> None:
        self.declared.append((queue, dict(arguments or {})))

    async def exchange_declare(self, *_: Any, **__: Any) -> None:
        pass

    async def queue_bind(self, *_: Any, **__: Any) -> None:
        pass


async def planned_declarations(
    declarations: Declarations, queue_name: str
) -> list[tuple[str, dict[str, Any]]]:
    """The queues ``declarations`` declares for ``queue_name``, with their arguments, in
    order (nothing is sent to RabbitMQ)."""
    recorder = _RecordingChannel()

    async def channel() -> aiormq.abc.AbstractChannel:
        return cast("aiormq.abc.AbstractChannel", recorder)

    dry = copy.copy(declarations)
    dry._channel = channel
    dry._done = {}
    await dry.queue(queue_name)
    return recorder.declared


async def probe_declarations(broker: RabbitmqBroker, queue_name: str) -> list[QueueProbe]:
    """Probe each queue the broker declares for ``queue_name`` (see the module's doc)."""
    declarations = broker._declarations
    probes = []
    for name, arguments in await planned_declarations(declarations, queue_name):
        probes.append(await _probe(broker, name, arguments, declarations.dramatiq_compat))
    return probes


async def _probe(
    broker: RabbitmqBroker, name: str, arguments: dict[str, Any], compat: bool
) -> QueueProbe:
    arguments = dict(arguments)
    adopted: list[Clash] = []
    key, value = PROBE_ARGUMENT
    for attempt in range(_MAX_ADOPTIONS):
        async with _throwaway_channel(broker) as channel:
            if attempt == 0:
                # Passive first: a RabbitMQ older than streams (3.9) would not refuse the probe.
                try:
                    await channel.queue_declare(name, passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    return QueueProbe(name, exists=False)
            try:
                await channel.queue_declare(name, durable=True, arguments={**arguments, key: value})
            except aiormq.exceptions.ChannelPreconditionFailed as exc:
                clash = parse_clash(exc)
                if clash is None:
                    if f"'{key}'" in str(exc):  # deleted meanwhile: refused, not created
                        return QueueProbe(name, exists=False)
                    raise
            else:
                clash = None
        if clash is None or clash.argument == key:
            return QueueProbe(name, exists=True, adopted=tuple(adopted))
        if not (compat and dramatiq_adoptable(name, clash.argument)):
            break
        adopted.append(clash)
        adopt(arguments, clash)
    return QueueProbe(name, exists=True, clash=clash, adopted=tuple(adopted))


@asynccontextmanager
async def _throwaway_channel(broker: RabbitmqBroker) -> AsyncIterator[aiormq.abc.AbstractChannel]:
    # A plain aiormq channel: a refusal closes it, and a robust one would be reopened.
    connection = await broker._control.connect()
    await connection.connected.wait()
    transport = connection.transport
    assert transport is not None
    channel = await transport.connection.channel(publisher_confirms=False)
    try:
        yield channel
    finally:
        if not channel.is_closed:
            await channel.close()
