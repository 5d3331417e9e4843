"""``Actor.call`` on the in-memory broker: replies are futures of this process."""

from __future__ import annotations

import asyncio
import logging

from .._replies import ReplySupport

__all__ = ["MemoryReplies"]

log = logging.getLogger("aqueue.brokers.memory")

#: The reply address of every in-memory broker (each keeps its own waiting calls).
MEMORY_REPLY_ADDRESS = "aqueue.memory-reply"


class MemoryReplies(ReplySupport):
    """The reply methods of :class:`~aqueue.InMemoryBroker`."""

    _replies: dict[str, asyncio.Future[bytes]] | None = None

    def _waiting(self) -> dict[str, asyncio.Future[bytes]]:
        if self._replies is None:
            self._replies = {}
        return self._replies

    async def _expect_reply(self, correlation_id: str) -> tuple[str, asyncio.Future[bytes]]:
        reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting()[correlation_id] = reply
        return MEMORY_REPLY_ADDRESS, reply

    def _forget_reply(self, correlation_id: str) -> None:
        self._waiting().pop(correlation_id, None)

    async def publish_reply(self, address: str, correlation_id: str, body: bytes) -> None:
        reply = self._waiting().pop(correlation_id, None)
        if address != MEMORY_REPLY_ADDRESS or reply is None or reply.done():
            log.debug("reply to message %s discarded: nobody waits for it", correlation_id)
            return
        reply.set_result(body)
