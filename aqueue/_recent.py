"""What this process did with recent messages, to know RabbitMQ's copies of them again.

When a worker's connection drops, RabbitMQ puts each delivery it had not acknowledged
back in its queue and delivers it again, marked redelivered, often to the same process
a second later. The actors that were running go on (their work is not thrown away), so
the copy of a message may arrive while the message still runs here, or after it
finished and its ack was lost with the connection. ``RecentMessages`` lets the worker
wait for the run in progress and then settle the copy the same way, ack at once the copy
of a message that finished, and tell the redelivery counter that a copy came back for a
reason this process knows (its connection dropped), not because a worker died on it.

A message is known by its id and its retry count: a retry is another attempt, while a
copy that a redelivery counter republished (in this process or another one that got
RabbitMQ's copy) is the same attempt.
"""

from __future__ import annotations

import asyncio
import collections
import enum

__all__ = ["Outcome", "RecentMessages"]

Key = tuple[str, object]


class Outcome(enum.Enum):
    """How a run of a message ended for this process."""

    #: Settled for good: acked (succeeded, skipped, retry scheduled) or dead-lettered.
    FINISHED = "finished"
    #: Not settled here: lost with its channel, requeued or given back; a copy comes again.
    RETURNED = "returned"


class RecentMessages:
    """The messages running now, and the last ``size`` messages that finished or returned.

    Every message passes here twice (``start``, ``end``), so both are a few dict
    operations: the future a copy waits on is made only when a copy comes.
    """

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        # A run in progress, and the future of the copies waiting for it (None: no copy).
        self._running: dict[Key, asyncio.Future[Outcome] | None] = {}
        self._ended: collections.OrderedDict[Key, Outcome] = collections.OrderedDict()

    @staticmethod
    def key(message_id: str, retries: object) -> Key:
        return (message_id, retries)

    def is_running(self, key: Key) -> bool:
        """Whether a run of ``key`` is in progress here."""
        return key in self._running

    async def wait(self, key: Key) -> None:
        """Wait until the run of ``key`` in progress here (if any) ended."""
        running = self._running
        while key in running:
            future = running[key]
            if future is None:
                future = running[key] = asyncio.get_running_loop().create_future()
            await asyncio.shield(future)

    def ended(self, key: Key) -> Outcome | None:
        """How the last run of ``key`` here ended, if it ended recently."""
        return self._ended.get(key)

    def start(self, key: Key) -> None:
        """A run of ``key`` starts (the caller checked none is running)."""
        self._running[key] = None

    def end(self, key: Key, outcome: Outcome) -> None:
        """The run of ``key`` ended: remember how, and tell the copies waiting for it."""
        future = self._running.pop(key, None)
        if future is not None and not future.done():
            future.set_result(outcome)
        ended = self._ended
        if key in ended:
            ended.move_to_end(key)
        ended[key] = outcome
        if len(ended) > self._size:
            ended.popitem(last=False)
