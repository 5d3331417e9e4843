"""The queues of a pool of limit tokens: names, arguments, and their declaration and filling.

A pool is filled by the process that finds it not ready while it holds
``aqueue.limit.<key>.lock``, an exclusive queue (one connection at a time may declare it;
it goes when that connection closes). Filled means: the token queue (and the park queue
of a rate) declared and emptied, ``count`` tokens published and confirmed, then the marker
queue ``aqueue.limit.<key>.filled`` declared. A pool without its marker (its filler died,
or a publish failed, half way) is not ready: no token is taken from it, and the next
process to use it empties and fills it again. All of them expire after a week unused
(``x-expires``): the pools of numbers changed in code go away by themselves.

How the tokens move between these queues is in :mod:`.limits`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiormq
import anyio

from ...errors import AqueueError
from ...limits import Tokens
from .errors import CONNECTION_ERRORS_OR_TIMEOUT, describe_error

__all__ = [
    "LimitSetupError",
    "declare_token_queues",
    "fill_under_lock",
    "filled_queue_name",
    "park_queue_name",
    "pool_is_ready",
    "token_queue_name",
]

log = logging.getLogger("aqueue.limits")

PREFIX = "aqueue.limit."
#: Queues of a pool unused this long (ms) are deleted by RabbitMQ.
EXPIRES_MS = 7 * 24 * 3600 * 1000
#: How long one RPC of the limit machinery may take (s).
RPC_TIMEOUT = 10.0
#: How long filling a new pool may wait for the process that holds its lock (s).
LOCK_TIMEOUT = 30.0

OpenChannel = Callable[[], Awaitable[aiormq.abc.AbstractChannel]]
Publish = Callable[[str, int], Awaitable[None]]  # (queue, token number)


def token_queue_name(tokens: Tokens) -> str:
    """The queue of a pool's ready tokens."""
    return PREFIX + tokens.key


def park_queue_name(tokens: Tokens) -> str:
    """The queue where used rate tokens wait out their period."""
    return PREFIX + tokens.key + ".park"


def filled_queue_name(tokens: Tokens) -> str:
    """The empty queue whose existence says the pool was filled completely."""
    return PREFIX + tokens.key + ".filled"


def park_ttl_ms(period: float) -> int:
    """A used rate token's time in the park: the period, and 10 ms for RabbitMQ's expiry
    in whole milliseconds. The token was parked after its run ended, so the next run that
    takes it starts over a period after that run started."""
    return round(period * 1000) + 10


def _arguments(tokens: Tokens) -> dict[str, dict[str, Any]]:
    """The queues of a pool and their arguments, in the order they are declared.

    Classic whatever the vhost's default queue type: a quorum queue would count the
    requeues of a concurrency token and drop it at its delivery limit.
    """
    queue = token_queue_name(tokens)
    common = {"x-queue-type": "classic", "x-expires": EXPIRES_MS}
    if tokens.kind == "concurrency":
        return {queue: common}
    park = park_queue_name(tokens)
    return {
        park: {
            **common,
            "x-message-ttl": park_ttl_ms(tokens.period),
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": queue,
        },
        queue: {**common, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": park},
    }


class LimitSetupError(AqueueError):
    """A limit's token queues could not be declared as needed."""


async def pool_is_ready(open_channel: OpenChannel, tokens: Tokens) -> bool:
    """Whether the pool was filled completely and its token queue exists (passive
    declares, on a channel of their own)."""
    channel = await open_channel()
    try:
        with anyio.fail_after(RPC_TIMEOUT):
            await channel.queue_declare(filled_queue_name(tokens), passive=True)
            await channel.queue_declare(token_queue_name(tokens), passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return False
    finally:
        await _close(channel)
    return True


async def declare_token_queues(
    open_channel: OpenChannel, tokens: Tokens, *, filled: bool = True
) -> None:
    """Declare the pool's queues (which renews their expiry), its marker too if ``filled``.

    Raises:
        LimitSetupError: one exists with other arguments.
    """
    queues = _arguments(tokens)
    if filled:
        queues[filled_queue_name(tokens)] = {"x-queue-type": "classic", "x-expires": EXPIRES_MS}
    channel = await open_channel()
    try:
        with anyio.fail_after(RPC_TIMEOUT):
            for queue, arguments in queues.items():
                await channel.queue_declare(queue, durable=True, arguments=arguments)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise LimitSetupError(
            f"limit {tokens.limit}: a queue of its tokens exists with other arguments "
            f"({describe_error(exc)}); delete the queues {PREFIX}{tokens.key}* to have "
            "them declared and filled again"
        ) from None
    finally:
        await _close(channel)


async def _close(channel: aiormq.abc.AbstractChannel) -> None:
    """Close a channel an error may have closed already."""
    if not channel.is_closed:
        try:
            with anyio.fail_after(RPC_TIMEOUT):
                await channel.close()
        except CONNECTION_ERRORS_OR_TIMEOUT as exc:
            log.debug("closing a channel failed (%s): it goes with its connection", exc)


async def _purge(open_channel: OpenChannel, tokens: Tokens) -> None:
    """Empty the pool's queues (on a channel of their own: not the lock's, which a timeout
    would close, keeping the lock until the connection closes)."""
    channel = await open_channel()
    try:
        with anyio.fail_after(RPC_TIMEOUT):
            for queue in _arguments(tokens):  # the park queue first: it feeds the other
                await channel.queue_purge(queue)
    finally:
        await _close(channel)


async def fill_under_lock(open_channel: OpenChannel, tokens: Tokens, publish: Publish) -> None:
    """Fill the pool if it is not ready, holding its lock queue: its queues declared and
    emptied (of the tokens of a fill that did not end), ``count`` tokens published, then
    its marker declared."""
    lock = PREFIX + tokens.key + ".lock"
    deadline = time.monotonic() + LOCK_TIMEOUT
    pause = 0.02
    while True:
        channel = await open_channel()
        try:
            with anyio.fail_after(RPC_TIMEOUT):
                await channel.queue_declare(lock, exclusive=True)
            break
        except aiormq.exceptions.ChannelLockedResource:
            if time.monotonic() > deadline:
                raise LimitSetupError(
                    f"limit {tokens.limit}: another process held the lock {lock} for "
                    f"over {LOCK_TIMEOUT:g} s"
                ) from None
            await asyncio.sleep(pause * random.uniform(0.5, 1.0))
            pause = min(0.5, pause * 2)
        except BaseException:
            await _close(channel)
            raise
    try:
        if not await pool_is_ready(open_channel, tokens):
            await declare_token_queues(open_channel, tokens, filled=False)
            queue = token_queue_name(tokens)
            await _purge(open_channel, tokens)
            for i in range(0, tokens.count, 100):
                await asyncio.gather(
                    *(publish(queue, n) for n in range(i, min(tokens.count, i + 100)))
                )
            await declare_token_queues(open_channel, tokens)
            log.info("limit %s: filled %s with %d tokens", tokens.limit, queue, tokens.count)
    finally:
        try:
            with anyio.fail_after(RPC_TIMEOUT):
                await channel.queue_delete(lock)
                await channel.close()
        except CONNECTION_ERRORS_OR_TIMEOUT as exc:
            log.debug("deleting %s failed (%s): it goes with its connection", lock, exc)
