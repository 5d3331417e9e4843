"""Group callbacks on RabbitMQ: a durable queue of records per group, an exclusive claim.

For a group ``<id>``:

* ``aqueue.group.<id>`` holds the members' records (durable, ``x-expires``: RabbitMQ deletes
  it once no one declared or read it for the group's ``expires``, one day by default).
  Each member declares it (which restarts that clock) and publishes its record, confirmed;
  its message count says how many records there are.
* ``aqueue.group.<id>.claim`` is the claim: an exclusive queue, which one connection at a
  time can declare (another gets ``RESOURCE_LOCKED``) and which RabbitMQ deletes when that
  connection closes. So a claimer killed at any point releases the claim by dying, and its
  unacked reads of the records go back to the queue: its message, redelivered, runs the
  member again, and the member decides the group again. It is deleted when released, and
  carries ``x-expires`` too.

The claimer reads the records with ``basic.get`` and leaves them unacked; once the group is
decided and the callback confirmed, it publishes the done record and acks what it read, so
the queue keeps only the done record (and any later duplicate) until it expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiormq
from pamqp.commands import Basic

from ..._groups import GroupClaim, GroupMember, GroupSupport
from ...errors import BrokerConnectionError
from .broker_parts import BrokerParts

__all__ = ["RabbitmqGroups", "claim_queue", "records_queue"]

log = logging.getLogger("aqueue.brokers.rabbitmq")


def records_queue(group_id: str) -> str:
    """The queue of a group's records."""
    return f"aqueue.group.{group_id}"


def claim_queue(group_id: str) -> str:
    """The exclusive queue whose holder decides a group."""
    return f"aqueue.group.{group_id}.claim"


def _arguments(member: GroupMember) -> dict[str, Any]:
    # Classic whatever the vhost's default type: a quorum queue would count every record
    # given back as a delivery (RabbitMQ 4.0-4.2) and drop it at its delivery limit.
    return {"x-expires": max(1, round(member.expires * 1000)), "x-queue-type": "classic"}


class _RabbitmqClaim(GroupClaim):
    def __init__(
        self, broker: RabbitmqGroups, channel: aiormq.abc.AbstractChannel, member: GroupMember
    ) -> None:
        self._broker = broker
        self._channel = channel
        self._member = member
        self.bodies: list[bytes] = []
        self._last_tag = 0
        self._timeout = broker.publish_timeout

    async def read(self) -> None:
        name = records_queue(self._member.id)
        while True:
            got = await self._channel.basic_get(name, no_ack=False, timeout=self._timeout)
            if not isinstance(got.delivery, Basic.GetOk):
                return
            self.bodies.append(got.body)
            self._last_tag = got.delivery_tag or self._last_tag

    async def finish(self, done: bytes) -> None:
        await self._broker._group_add(self._member, done)
        if self._last_tag:
            await self._channel.basic_ack(self._last_tag, multiple=True)
            self._last_tag = 0

    async def give_back(self) -> None:
        """Return the records read to the queue before the claim is released."""
        if self._last_tag:
            await self._channel.basic_nack(self._last_tag, multiple=True, requeue=True)
            self._last_tag = 0

    async def count(self) -> None:
        """Count the records once the claim is released, after the requeue of those read.

        Not with a declare: a classic queue answers its ``stat`` before the requeues it has
        not handled yet (it prioritises it), so the count could miss them. A ``basic.get``
        on the channel that sent the requeue comes after it; its ``message_count`` is what
        is left behind the message it got, which goes straight back.
        """
        got = await self._channel.basic_get(
            records_queue(self._member.id), no_ack=False, timeout=self._timeout
        )
        if not isinstance(got.delivery, Basic.GetOk):
            self.count_after_release = 0
            return
        self.count_after_release = int(got.delivery.message_count or 0) + 1
        if got.delivery.delivery_tag is not None:
            await self._channel.basic_nack(got.delivery.delivery_tag, requeue=True)


class RabbitmqGroups(BrokerParts, GroupSupport):
    """The group methods of :class:`~aqueue.RabbitmqBroker`."""

    async def _declare_records(self, member: GroupMember) -> int:
        channel = await self._channel_for_topology()
        ok = await channel.queue_declare(
            records_queue(member.id), durable=True, arguments=_arguments(member)
        )
        return int(ok.message_count or 0) if ok is not None else 0

    async def _group_add(self, member: GroupMember, record: bytes) -> None:
        # Declared each time: that restarts the queue's expiry, and creates it if it expired.
        await self._declare_records(member)
        await self.publish(
            records_queue(member.id), record, message_id=f"{member.id}.{member.index}"
        )

    async def _group_count(self, member: GroupMember) -> int:
        return await self._declare_records(member)

    @contextlib.asynccontextmanager
    async def _group_claim(self, member: GroupMember) -> AsyncIterator[GroupClaim | None]:
        name = claim_queue(member.id)
        channel = await asyncio.wait_for(self._claim_channel(), self.publish_timeout)
        try:
            await channel.queue_declare(
                name, exclusive=True, arguments=_arguments(member), timeout=self.publish_timeout
            )
        except aiormq.exceptions.ChannelLockedResource:
            log.debug("group %s: claimed by another connection", member.id)
            yield None
            return
        claim = _RabbitmqClaim(self, channel, member)
        try:
            await claim.read()
            yield claim
        finally:
            # Released on errors too: else it would stay held as long as this connection.
            try:
                await claim.give_back()
                await channel.queue_delete(name, timeout=self.publish_timeout)
                await claim.count()
                await channel.close()
            except Exception:
                await self._delete_claim(name)

    async def _delete_claim(self, name: str) -> None:
        try:
            channel = await asyncio.wait_for(self._claim_channel(), self.publish_timeout)
            await channel.queue_delete(name, timeout=self.publish_timeout)
            await channel.close()
        except Exception as exc:
            # The connection is gone, and the exclusive queue with it.
            log.debug("could not delete %s: %r", name, exc)

    async def _claim_channel(self) -> aiormq.abc.AbstractChannel:
        # A plain channel: a refused claim closes it, and aio-pika must not reopen it.
        connection = await self._control.connect()
        await connection.connected.wait()
        transport = connection.transport
        if transport is None:
            raise BrokerConnectionError("the connection was lost; the member runs again")
        return await transport.connection.channel(publisher_confirms=False)
