"""What ``Broker.join`` waits for: deliveries in flight here, retries scheduled here, failures."""

from __future__ import annotations

import abc
import collections
import time

import anyio

from .message import Message


class InFlightTracking(abc.ABC):
    """The part of a broker that knows what this process has in flight, per queue."""

    def __init__(self) -> None:
        # Deliveries of each queue being processed in this process; join() waits for them.
        self._in_flight: dict[str, int] = {}
        # What this process put back in flight (retries, counted redeliveries, requeues,
        # give-backs), by queue: message id -> when to stop waiting for it if it is not
        # received here again (another process took it).
        self._coming_back: dict[str, dict[str, float]] = {}
        self._anonymous = 0  # put back without a message id
        # Whether join() also waits for the delayed messages this process sends (they are
        # put back too): set by the pytest plugin, so a drain waits for them on RabbitMQ.
        self._join_waits_for_delays = False
        # Exceptions of messages that failed for good here, by queue, for join(fail_fast=True).
        self._failures: dict[str, collections.deque[BaseException]] = {}

    @property
    @abc.abstractmethod
    def queue_names(self) -> set[str]:
        """The queues of the registered actors."""

    @abc.abstractmethod
    async def ready_count(self, queue_name: str) -> int:
        """How many messages wait in ``queue_name``, ready to be delivered."""

    async def join(
        self,
        queue_name: str,
        *,
        timeout: float | None = None,
        fail_fast: bool = False,
        poll_interval: float = 0.02,
    ) -> None:
        """Wait until ``queue_name`` has no ready messages and none of it is in flight here.

        In flight means received by a worker in this process and not yet settled. What
        this process put back for the queue counts too until it is received here again
        (or a moment after it was due): retries, counted redeliveries, requeues and
        messages a stopping worker gave back. Idle must be seen on two checks in a row,
        so a delivery on its way from the broker is not missed.

        Args:
            timeout: Seconds to wait at most.
            fail_fast: Re-raise the exception of the first message of this queue that
                failed for good in this process (with the actor's traceback).

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        idle_checks = 0
        while True:
            if (
                self._in_flight.get(queue_name, 0) == 0
                and not self._coming_back_to(queue_name)
                and await self.ready_count(queue_name) == 0
            ):
                idle_checks += 1
                if idle_checks >= 2 and self._in_flight.get(queue_name, 0) == 0:
                    break
            else:
                idle_checks = 0
            if fail_fast:
                self._raise_failure(queue_name)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"queue {queue_name!r} was not drained within {timeout} s")
            await anyio.sleep(poll_interval)
        if fail_fast:
            self._raise_failure(queue_name)

    async def join_all(self, *, timeout: float | None = None, fail_fast: bool = False) -> None:
        """:meth:`join` every queue that has actors, until all are idle together."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for queue_name in sorted(self.queue_names):
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                await self.join(queue_name, timeout=remaining, fail_fast=fail_fast)
            # A message of one queue may have sent to another that was already joined.
            counts = [await self.ready_count(q) for q in self.queue_names]
            if not any(counts) and not any(
                self._in_flight.get(q, 0) or self._coming_back_to(q) for q in self.queue_names
            ):
                return

    def _record_failure(self, queue_name: str, exc: BaseException) -> None:
        failures = self._failures.get(queue_name)
        if failures is None:
            failures = self._failures[queue_name] = collections.deque(maxlen=100)
        failures.append(exc)

    def _raise_failure(self, queue_name: str) -> None:
        failures = self._failures.get(queue_name)
        if failures:
            raise failures.popleft()

    def _delivery_started(self, queue_name: str) -> None:
        self._in_flight[queue_name] = self._in_flight.get(queue_name, 0) + 1

    def _delivery_settled(self, queue_name: str) -> None:
        self._in_flight[queue_name] -= 1

    def _retry_scheduled(self, message: Message, delay: float) -> None:
        """A retry (or a counted redelivery) of ``message`` is due in ``delay`` seconds."""
        self._put_back(message.queue_name, message.message_id, delay)

    def _delay_scheduled(self, message: Message, delay: float | None) -> None:
        """``message`` was sent with a delay: join waits for it if asked to."""
        if delay and self._join_waits_for_delays:
            self._put_back(message.queue_name, message.message_id, delay)

    def _put_back(self, queue_name: str, message_id: str | None, delay: float = 0.0) -> None:
        """Wait for the message in join until it is received here again, or a while after
        it is due (another process may consume it)."""
        if message_id is None:  # not an aqueue message: wait the grace period only
            self._anonymous += 1
            message_id = f"\0anonymous-{self._anonymous}"
        grace = max(2.0, delay * 0.02)
        self._coming_back_to(queue_name)  # drop those long due (run elsewhere)
        pending = self._coming_back.setdefault(queue_name, {})
        pending[message_id] = time.monotonic() + delay + grace

    def _message_received(self, message: Message) -> None:
        pending = self._coming_back.get(message.queue_name)
        if pending:
            pending.pop(message.message_id, None)

    def _coming_back_to(self, queue_name: str) -> bool:
        """Whether something this process put back for ``queue_name`` is still awaited."""
        pending = self._coming_back.get(queue_name)
        if not pending:
            return False
        now = time.monotonic()
        for message_id, until in list(pending.items()):
            if until <= now:
                del pending[message_id]
        return bool(pending)
