"""What a broker offers group callbacks: a per-group record of outcomes, and one claim.

Every member of a group with callbacks, once its outcome is final, adds a record (its
index, its result or its failure) to the group's records, then checks whether the group
is decided: when the records hold as many entries as the group has members (duplicates
of a redelivered member included, so fewer means undecided for sure), or when it failed
itself, it takes the group's claim, reads every record, and deduplicates them by index.
All members succeeded: the claimer publishes ``on_complete`` with the results in member
order; one failed: ``on_failure``. Then it adds a *done* record, so that no one decides
again, and releases the claim. Undecided (a duplicate made the count reach the size): it
releases the claim, and goes round again if a record arrived meanwhile, since the member
that added it may have found the claim taken and left the decision to the holder.

RabbitMQ brokers keep the records in a durable queue per group and the claim in an
exclusive queue (``brokers/rabbitmq/groups.py``); the in-memory broker in a dict.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec

__all__ = [
    "DEFAULT_GROUP_EXPIRY",
    "GROUP",
    "GroupClaim",
    "GroupMember",
    "GroupOutcome",
    "GroupRecord",
    "GroupSupport",
]

log = logging.getLogger("aqueue.groups")

#: The message option of a group member: a :class:`GroupMember` as a dict.
GROUP = "group"

#: How long a group's state may stay unused before RabbitMQ deletes it (seconds): one day.
DEFAULT_GROUP_EXPIRY = 86400.0

#: The index of the record that says the group was decided.
_DONE = -1

#: Rounds a member may go before it gives up (each needs a record that came meanwhile).
_MAX_ROUNDS = 1000


class GroupMember(msgspec.Struct, kw_only=True):
    """A member's place in its group, carried in its ``group`` option.

    Attributes:
        id: The group's id (a new one per ``send()``).
        index: The member's position, from 0.
        size: How many members the group has.
        expires: Seconds the group's state may stay unused on the broker.
        on_complete: The message sent once all succeeded, as a dict, or None.
        on_failure: The message sent once if a member failed for good, or None.
    """

    id: str
    index: int
    size: int
    expires: float
    on_complete: dict[str, Any] | None = None
    on_failure: dict[str, Any] | None = None


class GroupRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One member's outcome: its result (JSON) or its failure's text."""

    index: int
    ok: bool = True
    result: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"null"))
    error: str = ""


class GroupOutcome(msgspec.Struct, kw_only=True):
    """What the claimer found: every result in member order, or the first failure."""

    results: list[msgspec.Raw] | None = None
    failure: GroupRecord | None = None


_encoder = msgspec.json.Encoder()
_record_decoder = msgspec.json.Decoder(GroupRecord)


def member_of(value: Any) -> GroupMember:
    """The :class:`GroupMember` in a ``group`` option; ValueError if it is not one."""
    try:
        member = msgspec.convert(value, GroupMember)
    except msgspec.ValidationError as exc:
        raise ValueError(f"group must describe a group member: {exc}") from None
    if not member.id or not 0 <= member.index < member.size or member.expires <= 0:
        raise ValueError(f"group describes no valid member: {value!r}")
    return member


def result_record(index: int, result: Any) -> bytes:
    """The record of a success; TypeError or ValueError if ``result`` is not JSON."""
    try:
        raw = msgspec.Raw(_encoder.encode(result))
    except msgspec.EncodeError as exc:
        raise ValueError(str(exc)) from None
    return _encoder.encode(GroupRecord(index=index, result=raw))


def failure_record(index: int, error: str) -> bytes:
    """The record of a member that failed for good."""
    return _encoder.encode(GroupRecord(index=index, ok=False, error=error))


def decide(bodies: list[bytes], size: int) -> tuple[bool, GroupOutcome | None]:
    """Whether the records say the group was decided already, and else the outcome they
    show (None while undecided)."""
    results: dict[int, msgspec.Raw] = {}
    failure: GroupRecord | None = None
    for body in bodies:
        try:
            record = _record_decoder.decode(body)
        except msgspec.DecodeError:
            log.warning("a group record is not valid, ignored: %r", body[:200])
            continue
        if record.index == _DONE:
            return True, None
        if not record.ok:
            failure = failure or record
        elif 0 <= record.index < size:
            results.setdefault(record.index, record.result)
    if failure is not None:
        return False, GroupOutcome(failure=failure)
    if len(results) == size:
        return False, GroupOutcome(results=[results[i] for i in range(size)])
    return False, None


class GroupClaim(abc.ABC):
    """The group's claim, held: the records read, and how to mark the group decided."""

    bodies: list[bytes]
    #: The group's record count taken once the records read were given back, where the
    #: broker can order it after them (RabbitMQ: on the claim's own channel); else None.
    count_after_release: int | None = None

    @abc.abstractmethod
    async def finish(self, done: bytes) -> None:
        """Add the ``done`` record and drop the records read (the group is decided)."""


class GroupSupport(abc.ABC):
    """The part of :class:`~aqueue.broker.Broker` that the
    :class:`~aqueue.middleware.Groups` middleware uses."""

    _group_locks: dict[str, tuple[asyncio.Lock, int]] | None = None

    async def settle_group_member(
        self,
        member: GroupMember,
        record: bytes,
        publish: Callable[[GroupOutcome], Awaitable[None]],
    ) -> None:
        """Add ``record`` to the group of ``member``; if that decides the group, call
        ``publish(outcome)`` (once per group, barring a crash between it and the end).

        Raises:
            BrokerError: the broker could not be reached (the member is run again).
        """
        await self._group_add(member, record)
        must_read = not _record_decoder.decode(record).ok
        for _ in range(_MAX_ROUNDS):
            if not must_read and await self._group_count(member) < member.size:
                return  # fewer records than members: a later member decides
            async with self._group_lock(member.id), self._group_claim(member) as claim:
                if claim is None:
                    # Another process holds it: it reads this record, or goes round again.
                    return
                done, outcome = decide(claim.bodies, member.size)
                if done:
                    return
                if outcome is not None:
                    await publish(outcome)
                    await claim.finish(_encoder.encode(GroupRecord(index=_DONE)))
                    return
                read = len(claim.bodies)
            count = claim.count_after_release
            if count is None:
                count = await self._group_count(member)
            if count <= read:
                return
            must_read = True  # records came while it held the claim: read them
        log.error("group %s: gave up deciding after %d rounds", member.id, _MAX_ROUNDS)

    @contextlib.asynccontextmanager
    async def _group_lock(self, group_id: str) -> AsyncIterator[None]:
        """One claimer per group in this process (the claim itself is per connection)."""
        if self._group_locks is None:
            self._group_locks = {}
        locks = self._group_locks
        lock, users = locks.get(group_id, (asyncio.Lock(), 0))
        locks[group_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = locks[group_id]
            if users == 1:
                del locks[group_id]
            else:
                locks[group_id] = (lock, users - 1)

    @abc.abstractmethod
    async def _group_add(self, member: GroupMember, record: bytes) -> None:
        """Add a record to the group's records, durably (confirmed)."""

    @abc.abstractmethod
    async def _group_count(self, member: GroupMember) -> int:
        """How many records the group holds (duplicates and the done record included)."""

    @abc.abstractmethod
    def _group_claim(
        self, member: GroupMember
    ) -> contextlib.AbstractAsyncContextManager[GroupClaim | None]:
        """Take the group's claim and read its records; None if someone else holds it.
        Leaving releases the claim (the records read stay, unless ``finish`` dropped them)."""
