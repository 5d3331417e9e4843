"""Group callbacks on the in-memory broker: each group's records in a list of this process."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from .._groups import GroupClaim, GroupMember, GroupSupport

__all__ = ["MemoryGroups"]


class _MemoryClaim(GroupClaim):
    def __init__(self, records: list[bytes]) -> None:
        self._records = records
        self.bodies = list(records)

    async def finish(self, done: bytes) -> None:
        # What RabbitMQ keeps of a decided group: the done record (and later duplicates).
        del self._records[: len(self.bodies)]
        self._records.append(done)


class MemoryGroups(GroupSupport):
    """The group methods of :class:`~aqueue.InMemoryBroker` (claims are the process's
    lock: there is no other process)."""

    _group_records: dict[str, list[bytes]] | None = None

    def _records(self, group_id: str) -> list[bytes]:
        if self._group_records is None:
            self._group_records = {}
        return self._group_records.setdefault(group_id, [])

    async def _group_add(self, member: GroupMember, record: bytes) -> None:
        self._records(member.id).append(record)

    async def _group_count(self, member: GroupMember) -> int:
        return len(self._records(member.id))

    @contextlib.asynccontextmanager
    async def _group_claim(self, member: GroupMember) -> AsyncIterator[GroupClaim | None]:
        yield _MemoryClaim(self._records(member.id))
