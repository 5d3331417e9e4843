"""Limits on the in-memory broker: the tokens of each limit as counters of this process."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
from collections.abc import Iterable

from .._limit_support import LimitSupport, TokenHold
from ..limits import Tokens

__all__ = ["MemoryLimits"]


class _Pool:
    """A limit's tokens of one kind: how many are held, and for a rate, when each of the
    last used ones was released (it is free a period after)."""

    def __init__(self, tokens: Tokens) -> None:
        self.tokens = tokens
        self.held = 0
        self.released_at: collections.deque[float] = collections.deque()  # oldest first
        self.changed = asyncio.Condition()
        self.loop = asyncio.get_running_loop()

    def available_at(self, now: float) -> float:
        """When a token is free: ``now`` or earlier if one is, inf if only a release frees one."""
        tokens = self.tokens
        if tokens.kind == "concurrency":
            return now if self.held < tokens.count else math.inf
        while self.released_at and self.released_at[0] + tokens.period <= now:
            self.released_at.popleft()
        if self.held + len(self.released_at) < tokens.count:
            return now
        return self.released_at[0] + tokens.period if self.released_at else math.inf

    async def take(self, wait: float) -> TokenHold | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        async with self.changed:
            while True:
                now = loop.time()
                free_at = self.available_at(now)
                if free_at <= now:
                    self.held += 1
                    return _MemoryHold(self)
                if now >= deadline:
                    return None
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), min(free_at, deadline) - now)

    async def release(self, used: bool) -> None:
        async with self.changed:
            self.held -= 1
            if used and self.tokens.kind == "rate":
                self.released_at.append(asyncio.get_running_loop().time())
            self.changed.notify_all()


class _MemoryHold(TokenHold):
    def __init__(self, pool: _Pool) -> None:
        self._pool: _Pool | None = pool

    async def release(self, *, used: bool = True) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.release(used)


class MemoryLimits(LimitSupport):
    """The limit methods of :class:`~aqueue.InMemoryBroker`."""

    _limit_pools: dict[str, _Pool] | None = None

    def _pool(self, tokens: Tokens) -> _Pool:
        if self._limit_pools is None:
            self._limit_pools = {}
        pool = self._limit_pools.get(tokens.key)
        if pool is None or pool.loop is not asyncio.get_running_loop():  # a test's new loop
            pool = self._limit_pools[tokens.key] = _Pool(tokens)
        return pool

    async def prepare_tokens(self, tokens: Iterable[Tokens]) -> None:
        for t in tokens:
            self._pool(t)

    async def take_token(self, tokens: Tokens, *, wait: float) -> TokenHold | None:
        return await self._pool(tokens).take(wait)
