"""Limit tokens in RabbitMQ queues: a distributed semaphore and a sliding window, no other store.

Each pool of tokens (a limit's name and numbers, :attr:`Tokens.key`) is a durable queue
``aqueue.limit.<key>`` of ``count`` persistent messages. A token is taken with
``basic.get`` on the consuming connection and held unacknowledged while its message runs:

- A concurrency token is then rejected with ``requeue``: it is back in its queue at once.
- A rate token is then rejected without ``requeue``: the queue dead-letters it to
  ``aqueue.limit.<key>.park``, whose message TTL (the period) dead-letters it back. A
  token's next run starts at least a period after its previous run ended, so at most
  ``count`` start in any window of the period, however long a run waited for a thread.

A worker that dies, or loses its connection, has its channel closed and RabbitMQ requeues
the tokens it held (ready, not parked). So an RPC on a channel that holds tokens is never
cancelled (aiormq closes a channel whose RPC is cancelled or times out): a ``basic.get``
runs as a task of its own, only the waiting for it is bounded, and a token it brings
after it was given up goes back at once.

A process keeps a concurrency token its run gave back for its next run, without a round
trip, while the token is younger than a second and for at most 50 ms unused; then it goes
back to its queue, where every process has its turn (a run that waits takes it with
``basic.get``, polled every 10 to 100 ms).

The tokens move inside RabbitMQ; no client publishes them back, so their number stays
``count``. How a pool is filled, once, is in :mod:`.limit_queues`.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import random
import time
from collections.abc import Coroutine, Iterable
from typing import Any

import aiormq
import anyio
from pamqp import commands as spec

from ..._limit_support import LimitSupport, TokenHold
from ...limits import Tokens
from .broker_parts import BrokerParts
from .errors import CONNECTION_ERRORS_OR_TIMEOUT
from .limit_queues import (
    RPC_TIMEOUT,
    declare_token_queues,
    fill_under_lock,
    pool_is_ready,
    token_queue_name,
)

__all__ = ["RabbitmqLimits"]

log = logging.getLogger("aqueue.limits")

#: Declared again this often while in use (s), renewing the park queue's expiry.
REDECLARE_EVERY = 3600.0
#: Polling a pool's queue while messages wait: from, to (s).
POLL_FIRST, POLL_MAX = 0.01, 0.1
#: A concurrency token a run gave back goes to the next run of its process without a
#: round trip while it is younger than REUSE_FOR (s) and waits REUSE_LINGER (s) for one;
#: then it goes back to its queue, where other processes take their turn.
REUSE_FOR, REUSE_LINGER = 1.0, 0.05


class _Token:
    """A token this process holds unacknowledged on its pool's channel."""

    __slots__ = ("channel", "idle_since", "tag", "taken_at")

    def __init__(self, channel: aiormq.abc.AbstractChannel, tag: int) -> None:
        self.channel = channel
        self.tag = tag
        self.taken_at = time.monotonic()
        self.idle_since = 0.0

    async def give_back(self, *, requeue: bool = True) -> None:
        """Return it to its queue, or without ``requeue`` to its park queue (if its channel
        closed, RabbitMQ requeued it then). A reject has no reply: cancelling it does not
        close the channel."""
        if self.channel.is_closed:
            return
        try:
            with anyio.fail_after(RPC_TIMEOUT):
                await self.channel.basic_reject(self.tag, requeue=requeue)
        except CONNECTION_ERRORS_OR_TIMEOUT as exc:
            log.debug("returning a limit token failed (%s): its channel returns it", exc)


class _Hold(TokenHold):
    """A run's token; released, a concurrency token goes back to its pool, a rate token
    to its park queue (or back to its pool if its run did not start)."""

    def __init__(self, pool: _Pool, token: _Token) -> None:
        self._pool = pool
        self._token: _Token | None = token
        pool.held.add(token)

    async def release(self, *, used: bool = True) -> None:
        token, self._token = self._token, None
        if token is None:
            return
        if self._pool.tokens.kind == "concurrency":
            await self._pool.recycle(token)
            return
        self._pool.held.discard(token)
        await token.give_back(requeue=not used)


class _Pool:
    """One pool's tokens as this process sees them: a channel and the runs waiting."""

    def __init__(self, owner: RabbitmqLimits, tokens: Tokens) -> None:
        self.owner = owner
        self.tokens = tokens
        self.queue = token_queue_name(tokens)
        self.declared_at = -REDECLARE_EVERY
        self.loop = asyncio.get_running_loop()
        self.declaring = asyncio.Lock()
        self.opening = asyncio.Lock()
        self.channel: aiormq.abc.AbstractChannel | None = None
        self.waiters: collections.deque[asyncio.Future[TokenHold]] = collections.deque()
        self.poller: asyncio.Task[None] | None = None
        # Released here lately, kept for the next run a moment; the oldest is reused first.
        self.idle: collections.deque[_Token] = collections.deque()
        self.returning: set[asyncio.Future[Any]] = set()
        # Held by runs of this process (not idle): a warning if their channel closes.
        self.held: set[_Token] = set()

    async def take(self, wait: float) -> TokenHold | None:
        while self.idle:
            token = self.idle.popleft()
            if not token.channel.is_closed:
                return _Hold(self, token)
        await self.owner._ensure_pool(self)
        if wait <= 0:
            return await self._take_once()
        waiter: asyncio.Future[TokenHold] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        if self.poller is None or self.poller.done():
            # Owned by the pool; it ends once no run waits (each waits at most ``wait``).
            self.poller = asyncio.ensure_future(self._poll())
        try:
            await asyncio.wait({waiter}, timeout=wait)
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                await waiter.result().release(used=False)
            waiter.cancel()
            raise
        if waiter.done():
            return waiter.result()
        waiter.cancel()  # the poller skips it
        return None

    async def _poll(self) -> None:
        pause = POLL_FIRST
        while self._first_waiter() is not None:
            hold = None
            try:
                got = await self._get()
                if got is not None:
                    waiter = self._first_waiter()
                    hold = self._claim(*got) if waiter is not None else None
                    if hold is not None and waiter is not None and not waiter.done():
                        waiter.set_result(hold)
                        pause = POLL_FIRST
                        continue
                    if hold is not None:
                        await hold.release(used=False)
                    elif waiter is None:
                        await _Token(*got).give_back()
            except CONNECTION_ERRORS_OR_TIMEOUT as exc:
                log.debug("limit %s: taking a token failed (%s)", self.tokens.limit, exc)
                pause = POLL_MAX
            await asyncio.sleep(pause * random.uniform(0.5, 1.0))
            pause = min(POLL_MAX, pause * 2)

    async def recycle(self, token: _Token) -> None:
        """A run gave ``token`` back: to a run of this process that waits for one, or kept
        for the next run a moment (``REUSE_LINGER``), while it is younger than ``REUSE_FOR``;
        else back to RabbitMQ, where every process may take it."""
        self.held.discard(token)
        if token.channel.is_closed:
            return
        if time.monotonic() - token.taken_at < REUSE_FOR:
            waiter = self._first_waiter()
            if waiter is not None:
                waiter.set_result(_Hold(self, token))
                return
            token.idle_since = since = time.monotonic()
            self.idle.append(token)
            loop = asyncio.get_running_loop()
            loop.call_later(REUSE_LINGER, self._return_if_idle, token, since)
            return
        await token.give_back()

    def _return_if_idle(self, token: _Token, since: float) -> None:
        if token.idle_since == since and token in self.idle:
            self.idle.remove(token)
            self._in_background(token.give_back())  # bounded by RPC_TIMEOUT

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self.returning.add(task)
        task.add_done_callback(self.returning.discard)

    def _first_waiter(self) -> asyncio.Future[TokenHold] | None:
        while self.waiters and self.waiters[0].done():
            self.waiters.popleft()
        return self.waiters[0] if self.waiters else None

    async def _take_once(self) -> TokenHold | None:
        try:
            got = await self._get()
        except CONNECTION_ERRORS_OR_TIMEOUT as exc:
            log.debug("limit %s: taking a token failed (%s)", self.tokens.limit, exc)
            return None
        return None if got is None else self._claim(*got)

    async def _get(self) -> tuple[aiormq.abc.AbstractChannel, int] | None:
        """One ``basic.get``: the channel and delivery tag of a token, or None.

        The get is never cancelled (that would close the channel, and requeue the tokens
        of every run of this pool): on a timeout or a cancellation only the waiting ends,
        and a token the get brings later goes back at once.
        """
        channel = await self._channel()
        getting = asyncio.ensure_future(channel.basic_get(self.queue, no_ack=False))
        late = functools.partial(self._got_late, channel)
        try:
            await asyncio.wait({getting}, timeout=RPC_TIMEOUT)
        except BaseException:
            getting.add_done_callback(late)  # done or not: its token, if any, goes back
            raise
        if not getting.done():
            getting.add_done_callback(late)
            raise TimeoutError(f"basic.get on {self.queue} took over {RPC_TIMEOUT:g} s")
        try:
            message = getting.result()
        except aiormq.exceptions.ChannelNotFoundEntity:
            log.warning("limit %s: its token queue %s is gone", self.tokens.limit, self.queue)
            self.declared_at = -REDECLARE_EVERY  # declared and filled again on next take
            await self.owner._ensure_pool(self)
            return None
        delivery = message.delivery
        if not isinstance(delivery, spec.Basic.GetOk):
            return None
        assert delivery.delivery_tag is not None
        return channel, delivery.delivery_tag

    def _got_late(self, channel: aiormq.abc.AbstractChannel, getting: asyncio.Future[Any]) -> None:
        if getting.cancelled() or getting.exception() is not None:
            return
        delivery = getting.result().delivery
        if isinstance(delivery, spec.Basic.GetOk) and delivery.delivery_tag is not None:
            log.debug("limit %s: a token came after its get was given up", self.tokens.limit)
            self._in_background(_Token(channel, delivery.delivery_tag).give_back())

    def _claim(self, channel: aiormq.abc.AbstractChannel, tag: int) -> TokenHold:
        return _Hold(self, _Token(channel, tag))

    async def _channel(self) -> aiormq.abc.AbstractChannel:
        # A channel per pool: a channel closed by an error on one pool's queue returns
        # the tokens held on it, and must not return those of other limits.
        async with self.opening:
            if self.channel is None or self.channel.is_closed:
                self.channel = channel = await self.owner._raw_channel()
                channel.closing.add_done_callback(functools.partial(self._closed, channel))
            return self.channel

    def _closed(self, channel: aiormq.abc.AbstractChannel, _: asyncio.Future[Any]) -> None:
        held = sum(1 for token in self.held if token.channel is channel)
        if held:
            log.warning(
                "limit %s: the channel holding %d of its %s tokens for running messages "
                "closed, and RabbitMQ put them back: the limit is not enforced for those "
                "runs until they end",
                self.tokens.limit,
                held,
                self.tokens.kind,
            )


class RabbitmqLimits(BrokerParts, LimitSupport):
    """The limit methods of :class:`~aqueue.RabbitmqBroker`."""

    #: Pools this broker used (an instance's own dict once it used one).
    _limit_pools: dict[str, _Pool] | None = None

    def _pool(self, tokens: Tokens) -> _Pool:
        if self._limit_pools is None:
            self._limit_pools = {}
        pool = self._limit_pools.get(tokens.key)
        if pool is None or pool.loop is not asyncio.get_running_loop():  # a test's new loop
            pool = self._limit_pools[tokens.key] = _Pool(self, tokens)
        return pool

    async def prepare_tokens(self, tokens: Iterable[Tokens]) -> None:
        for t in tokens:
            await self._ensure_pool(self._pool(t))

    async def take_token(self, tokens: Tokens, *, wait: float) -> TokenHold | None:
        return await self._pool(tokens).take(wait)

    async def _raw_channel(self) -> aiormq.abc.AbstractChannel:
        """A new plain channel on the consuming connection (held tokens belong with it)."""
        with anyio.fail_after(RPC_TIMEOUT):
            connection = await self._consuming.connect()
            await connection.connected.wait()
            transport = connection.transport
            assert transport is not None
            return await transport.connection.channel(publisher_confirms=False)

    async def _ensure_pool(self, pool: _Pool) -> None:
        """Make sure the pool is ready, filled completely, before a token is taken from it
        (checked at the first take, then hourly, when its queues are declared again)."""
        if time.monotonic() - pool.declared_at < REDECLARE_EVERY:
            return
        async with pool.declaring:
            if time.monotonic() - pool.declared_at < REDECLARE_EVERY:
                return
            if not await pool_is_ready(self._raw_channel, pool.tokens):
                await fill_under_lock(self._raw_channel, pool.tokens, self._publish_token)
            await declare_token_queues(self._raw_channel, pool.tokens)
            pool.declared_at = time.monotonic()

    async def _publish_token(self, queue: str, number: int) -> None:
        await self.publish(queue, b"", message_id=f"{queue}.{number}")
