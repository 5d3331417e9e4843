"""Publishing: persistent, mandatory, confirmed, bounded in time, errors mapped to aqueue's."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiormq
from pamqp.commands import Basic

from ...errors import BrokerBlockedError, BrokerConnectionError, NackedError, UnroutableError
from .connections import RoleConnection
from .errors import CONNECTION_ERRORS_OR_TIMEOUT, describe_error

log = logging.getLogger("aqueue.brokers.rabbitmq")


class Publisher:
    """Publishes on the publishing connection's confirm-mode channel."""

    def __init__(self, connection: RoleConnection, *, timeout: float) -> None:
        self._connection = connection
        self.timeout = timeout

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
        properties = Basic.Properties(
            delivery_mode=2,
            content_type="application/json",
            message_id=message_id,
            headers=headers,
            priority=priority,
        )
        role = self._connection
        deadline = time.monotonic() + self.timeout
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
                    body,
                    exchange=exchange,
                    routing_key=routing_key,
                    properties=properties,
                    mandatory=True,
                    timeout=max(deadline - time.monotonic(), 0.001),
                    wait=False,
                )
                return
            except aiormq.exceptions.ChannelNotFoundEntity:
                raise UnroutableError(
                    f"RabbitMQ has no exchange {exchange!r} for message {message_id}"
                ) from None
            except aiormq.exceptions.PublishError:
                raise UnroutableError(
                    f"RabbitMQ returned message {message_id}: no queue is bound for "
                    f"routing key {routing_key!r} on exchange {exchange!r}"
                ) from None
            except aiormq.exceptions.DeliveryError as exc:
                raise NackedError(f"RabbitMQ refused message {message_id}: {exc}") from None
            except CONNECTION_ERRORS_OR_TIMEOUT as exc:
                if time.monotonic() >= deadline or isinstance(exc, asyncio.TimeoutError):
                    self._raise_timeout(message_id, exc)
                log.debug(
                    "publish of %s interrupted (%r); waiting for the connection", message_id, exc
                )
                waiting = True
                await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def _raise_timeout(self, message_id: str, exc: BaseException) -> None:
        role = self._connection
        if role.blocked:
            raise BrokerBlockedError(
                f"RabbitMQ at {role.node} blocks publishing ({role.blocked_reason}): message "
                f"{message_id} was not confirmed within {self.timeout} s; it may still be "
                "published when the alarm clears"
            ) from None
        raise BrokerConnectionError(
            f"RabbitMQ at {role.node} did not confirm message {message_id} within "
            f"{self.timeout} s ({describe_error(exc)}); it may or may not have been queued"
        ) from None
