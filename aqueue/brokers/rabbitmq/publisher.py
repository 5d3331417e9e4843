"""Publishing: persistent, mandatory, confirmed, bounded in time, errors mapped to aqueue's."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import aiormq
import anyio

from ...errors import BrokerBlockedError, BrokerConnectionError, NackedError, UnroutableError
from .connections import RoleConnection
from .errors import CONNECTION_ERRORS, CONNECTION_ERRORS_OR_TIMEOUT, describe_error
from .publish_batches import Outgoing, can_batch, write_publishes

log = logging.getLogger("aqueue.brokers.rabbitmq")


class Publisher:
    """Publishes on the publishing connection's confirm-mode channel."""

    def __init__(self, connection: RoleConnection, *, timeout: float) -> None:
        self._connection = connection
        self.timeout = timeout
        # Single publishes waiting for their confirm, and those that arrived meanwhile,
        # to be written together at the next turn of the loop (see publish_item).
        self._in_flight = 0
        self._pending: list[tuple[Outgoing, asyncio.Future[None]]] = []
        self._flushes: set[asyncio.Task[None]] = set()

    async def publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        message_id: str,
        headers: dict[str, Any] | None = None,
        exchange: str = "",
        priority: int | None = None,
    ) -> None:
        """Publish ``body`` and wait for the broker's confirm, ``timeout`` seconds at most.

        ``priority`` is the AMQP priority property (a priority queue delivers higher ones
        first; dead-lettering, through the delay levels too, keeps it).

        Raises:
            UnroutableError: no queue is bound for ``routing_key``.
            NackedError: the broker refused the message.
            BrokerBlockedError: RabbitMQ blocks the connection (a resource alarm).
            BrokerConnectionError: no confirm within ``timeout``.
        """
        await self.publish_item(
            Outgoing(routing_key, body, message_id, exchange, headers, priority)
        )

    async def publish_item(self, item: Outgoing) -> None:
        """:meth:`publish` for a message already put together.

        A publish made while none is in flight goes out at once, through aiormq. One made
        while others wait for their confirm (concurrent sends) joins those made in the
        same turn of the event loop, and they are written together, as a batch of
        :meth:`publish_many`, at the next turn.
        """
        if self._in_flight == 0:
            self._in_flight += 1
            try:
                await self._publish_until(item, time.monotonic() + self.timeout)
            finally:
                self._in_flight -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((item, waiter))
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(self._flush)
        await waiter

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        self._in_flight += len(pending)
        task = asyncio.ensure_future(self._publish_pending(pending))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _publish_pending(self, pending: list[tuple[Outgoing, asyncio.Future[None]]]) -> None:
        try:
            errors = await self.publish_many([item for item, _ in pending])
        except BaseException as exc:
            for _, waiter in pending:
                if not waiter.done():
                    if isinstance(exc, asyncio.CancelledError):
                        waiter.cancel()
                    else:
                        waiter.set_exception(exc)
            raise
        finally:
            self._in_flight -= len(pending)
        for (_, waiter), error in zip(pending, errors, strict=True):
            if waiter.done():
                continue  # its sender was cancelled; the message may be queued
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    async def publish_many(self, items: Sequence[Outgoing]) -> list[Exception | None]:
        """Publish every item, pipelined, and wait for the broker's confirms, ``timeout``
        seconds at most; returns each item's error (as :meth:`publish` raises it), or
        None where RabbitMQ confirmed it.

        On a healthy connection the items go out in a few socket writes
        (:mod:`.publish_batches`); items a lost connection interrupted are published again
        one by one, as :meth:`publish` does, until the deadline.
        """
        if not items:
            return []
        deadline = time.monotonic() + self.timeout
        errors: list[Exception | None] = [None] * len(items)
        again: Sequence[int] = range(len(items))
        underlay = await self._healthy_underlay(deadline)
        if underlay is not None and can_batch(underlay):
            again = await self._publish_batch(underlay, items, errors, deadline)
            if again and time.monotonic() >= deadline:
                # Out of time: report them rather than publish them after all.
                for i in again:
                    errors[i] = self._timeout_error(items[i].message_id, asyncio.TimeoutError())
                again = []
        if again:
            results = await asyncio.gather(
                *(self._publish_until(items[i], deadline) for i in again),
                return_exceptions=True,
            )
            for i, result in zip(again, results, strict=True):
                if isinstance(result, BaseException):
                    if not isinstance(result, Exception):
                        raise result
                    errors[i] = result
        return errors

    async def _healthy_underlay(self, deadline: float) -> aiormq.abc.AbstractChannel | None:
        """The publish channel's aiormq channel (opened if it was not, ``deadline`` at
        most), or None while it cannot be used without waiting."""
        role = self._connection
        channel = role.existing_channel("publish")
        if channel is None:
            try:
                channel = await asyncio.wait_for(
                    asyncio.shield(role.channel("publish", confirms=True)),
                    max(deadline - time.monotonic(), 0.001),
                )
            except CONNECTION_ERRORS_OR_TIMEOUT:
                return None
        connection = role.connection
        if (
            role.blocked
            or connection is None
            or not connection.connected.is_set()
            or channel.is_closed
        ):
            return None
        try:
            return await channel.get_underlay_channel()
        except CONNECTION_ERRORS:
            return None

    async def _publish_batch(
        self,
        channel: aiormq.abc.AbstractChannel,
        items: Sequence[Outgoing],
        errors: list[Exception | None],
        deadline: float,
    ) -> list[int]:
        """Write ``items`` in batches and wait for their confirms, filling ``errors``;
        returns the indexes of the items to publish again (not written, or their
        connection was lost before the confirm)."""
        futures: list[asyncio.Future[Any] | None] = []
        try:
            try:
                with anyio.fail_after(max(deadline - time.monotonic(), 0.001)):
                    await write_publishes(channel, items, futures)
            except CONNECTION_ERRORS_OR_TIMEOUT as exc:
                log.debug("batch publish interrupted (%r); publishing the rest one by one", exc)
            written = [future for future in futures if future is not None]
            if written:
                await asyncio.wait(written, timeout=max(deadline - time.monotonic(), 0))
            again = list(range(len(futures), len(items)))
            for i, future in enumerate(futures):
                item = items[i]
                if future is None:
                    again.append(i)  # could not be put in frames: the single path says why
                elif not future.done():
                    errors[i] = self._timeout_error(item.message_id, asyncio.TimeoutError())
                elif future.cancelled():
                    again.append(i)
                elif isinstance(error := future.exception(), aiormq.exceptions.DeliveryError):
                    errors[i] = _publish_error(error, item) or error  # returned or nacked
                elif error is not None:
                    again.append(i)  # the channel went: its error is not the message's
            return sorted(again)
        finally:
            for future in futures:
                if future is not None:
                    future.cancel()  # no-op for answered ones; aiormq ignores a late answer

    async def _publish_until(self, item: Outgoing, deadline: float) -> None:
        """Publish one item through aiormq's ``basic_publish``, waiting for a lost
        connection to come back, until ``deadline``."""
        properties = item.properties()
        role = self._connection
        waiting = False
        while True:
            remaining = deadline - time.monotonic()
            try:
                channel = role.existing_channel("publish")
                if channel is None:
                    # Shielded: a timeout must not cancel a connect other sends share.
                    channel = await asyncio.wait_for(
                        asyncio.shield(role.channel("publish", confirms=True)),
                        max(remaining, 0.001),
                    )
                connection = role.connection
                if (
                    waiting
                    or role.blocked
                    or connection is None
                    or not connection.connected.is_set()
                ):
                    # Getting the channel waits while reconnecting or blocked: bound it.
                    waiting = True
                    underlay = await asyncio.wait_for(
                        channel.get_underlay_channel(), max(remaining, 0.001)
                    )
                else:
                    underlay = await channel.get_underlay_channel()
                # wait=False: the confirm is what we wait for; waiting for the socket to
                # drain too would hold the channel's lock and serialise concurrent sends.
                await underlay.basic_publish(  # type: ignore[call-arg]
                    item.body,
                    exchange=item.exchange,
                    routing_key=item.routing_key,
                    properties=properties,
                    mandatory=True,
                    timeout=max(deadline - time.monotonic(), 0.001),
                    wait=False,
                )
                return
            except CONNECTION_ERRORS_OR_TIMEOUT as exc:
                if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
                    raise _publish_error(exc, item) or exc from None
                if time.monotonic() >= deadline or isinstance(exc, asyncio.TimeoutError):
                    raise self._timeout_error(item.message_id, exc) from None
                log.debug(
                    "publish of %s interrupted (%r); waiting for the connection",
                    item.message_id,
                    exc,
                )
                waiting = True
                await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
            except aiormq.exceptions.DeliveryError as exc:  # PublishError is one
                raise _publish_error(exc, item) or exc from None

    def _timeout_error(self, message_id: str, exc: BaseException) -> Exception:
        role = self._connection
        if role.blocked:
            return BrokerBlockedError(
                f"RabbitMQ at {role.node} blocks publishing ({role.blocked_reason}): message "
                f"{message_id} was not confirmed within {self.timeout} s; it may still be "
                "published when the alarm clears"
            )
        return BrokerConnectionError(
            f"RabbitMQ at {role.node} did not confirm message {message_id} within "
            f"{self.timeout} s ({describe_error(exc)}); it may or may not have been queued"
        )


def _publish_error(exc: BaseException, item: Outgoing) -> Exception | None:
    """aqueue's error for a publish RabbitMQ answered with an error, else None."""
    if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
        return UnroutableError(
            f"RabbitMQ has no exchange {item.exchange!r} for message {item.message_id}"
        )
    if isinstance(exc, aiormq.exceptions.PublishError):
        return UnroutableError(
            f"RabbitMQ returned message {item.message_id}: no queue is bound for "
            f"routing key {item.routing_key!r} on exchange {item.exchange!r}"
        )
    if isinstance(exc, aiormq.exceptions.DeliveryError):
        return NackedError(f"RabbitMQ refused message {item.message_id}: {exc}")
    return None
