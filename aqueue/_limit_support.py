"""What a broker offers the :class:`~aqueue.middleware.Limits` middleware: tokens.

A limit's run takes one token of each kind it needs (:meth:`Limit.tokens`), holds it while
the message runs and releases it after: a concurrency token is free again at once, a rate
token a period later. RabbitMQ brokers keep tokens in queues (a
dead worker's held tokens return when its channel closes), the in-memory broker in
counters of its process.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable

from .limits import Tokens

__all__ = ["LimitSupport", "TokenHold"]


class TokenHold(abc.ABC):
    """A token taken for one run."""

    @abc.abstractmethod
    async def release(self, *, used: bool = True) -> None:
        """Give the token back: a concurrency token is free at once; a rate token that was
        ``used`` (its run may have started) a period later, else at once.

        Idempotent, bounded and never raises: a token that cannot be given back (its
        channel closed) was returned by the broker already.
        """


class LimitSupport(abc.ABC):
    """The part of :class:`~aqueue.broker.Broker` that the Limits middleware uses."""

    @abc.abstractmethod
    async def prepare_tokens(self, tokens: Iterable[Tokens]) -> None:
        """Make sure the pools of ``tokens`` exist, each filled once with its count."""

    @abc.abstractmethod
    async def take_token(self, tokens: Tokens, *, wait: float) -> TokenHold | None:
        """Take a token of ``tokens``, waiting for one up to ``wait`` seconds (0: one
        attempt); None if none came in that time."""
