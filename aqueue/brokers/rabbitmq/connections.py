"""Connections by role, over a list of node URLs, with RabbitMQ's flow control tracked.

A process holds at most two connections: one that publishes (sends, retries, delays,
dead letters) and, in a worker, one that consumes (every queue's channel and its acks).
RabbitMQ blocks a connection that publishes during a memory or disk alarm and then stops
reading it whole, acks included; keeping consumers on a connection that never publishes
lets them go on. Each connection is aio-pika's robust connection, made to move to the
next URL of the list whenever an attempt fails or the connection is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from yarl import URL

from ..._url import describe_url
from ...errors import BrokerConnectionError
from .errors import CONNECTION_ERRORS, CONNECTION_ERRORS_OR_TIMEOUT, describe_error
from .flow_control import watch_flow_control
from .library_logs import quiet_routine_reconnects
from .server import ServerVersion, format_version, server_version_of

log = logging.getLogger("aqueue.brokers.rabbitmq")

quiet_routine_reconnects()

# aio-pika raises RuntimeError for a channel opened while it reconnects.
_CHANNEL_OPEN_ERRORS: tuple[type[Exception], ...] = (RuntimeError, *CONNECTION_ERRORS)

#: Roles of a connection: what its client-provided name says in RabbitMQ.
PUBLISH, CONSUME, BOTH = "publish", "consume", "publish+consume"


class _RotatingConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection over several URLs: every failed attempt or lost
    connection moves the next attempt to the next URL (aio-pika alone retries one URL)."""

    def __init__(
        self,
        urls: list[URL],
        start: int,
        on_transport: Callable[[aiormq.abc.AbstractConnection], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(urls[start], **kwargs)
        self._urls = urls
        self._index = start
        self._explicit = {
            k: v
            for k, v in kwargs.items()
            if v is not None and k not in ("loop", "ssl_context", "client_properties")
        }
        self._on_transport = on_transport

    async def _on_connected(self) -> None:
        transport = self.transport
        if transport is not None:
            self._on_transport(transport.connection)
        await super()._on_connected()

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        await super()._on_connection_close(closing)
        if len(self._urls) > 1 and not self._close_called and not self.is_closed:
            self._move_to_next_url()

    def _move_to_next_url(self) -> None:
        self._index = (self._index + 1) % len(self._urls)
        url = self._urls[self._index]
        kwargs = self._parse_parameters({**dict(url.query), **self._explicit})
        kwargs.pop("reconnect_interval", None)
        kwargs.pop("fail_fast", None)
        kwargs["context"] = self.kwargs.get("context")
        if "client_properties" in self.kwargs:
            kwargs["client_properties"] = self.kwargs["client_properties"]
        self.url = url
        self.kwargs = kwargs


class RoleConnection:
    """One robust connection for one role, opened on first use and shared by its users.

    Attributes:
        role: ``"publish"``, ``"consume"`` or ``"publish+consume"`` (in the connection name).
        blocked_reason: Why RabbitMQ blocks this connection (a resource alarm), or None.
        server_version: The RabbitMQ version of the node this connection last opened on
            (read from its ``server_properties`` at every connect), or None before that.
    """

    def __init__(
        self,
        role: str,
        urls: list[str],
        *,
        start: int,
        connect_attempts: int,
        connect_retry_delay: float,
        connect_timeout: float,
        reconnect_interval: float,
        on_event: Callable[[str], None],
    ) -> None:
        self.role = role
        self._urls = [URL(u) for u in urls]
        self._start = start
        self._connect_attempts = connect_attempts
        self._connect_retry_delay = connect_retry_delay
        self._connect_timeout = connect_timeout
        self._reconnect_interval = reconnect_interval
        self._on_event = on_event
        self.connection: _RotatingConnection | None = None
        self._lock: asyncio.Lock | None = None
        self.blocked_reason: str | None = None
        self.server_version: ServerVersion | None = None
        self._blocked_since = 0.0
        self._unblocked: asyncio.Event | None = None
        self._channels: dict[str, AbstractRobustChannel] = {}
        self._plain_channel: aiormq.abc.AbstractChannel | None = None
        self._channel_lock: asyncio.Lock | None = None

    @property
    def node(self) -> str:
        """``host:port`` of the node this connection uses (or will try first)."""
        url = self.connection.url if self.connection is not None else self._urls[self._start]
        return describe_url(str(url))

    @property
    def blocked(self) -> bool:
        """Whether RabbitMQ blocks this connection now (a memory or disk alarm)."""
        return self.blocked_reason is not None

    async def wait_unblocked(self) -> None:
        """Return once RabbitMQ no longer blocks this connection."""
        if self._unblocked is not None:
            await self._unblocked.wait()

    async def connect(self) -> _RotatingConnection:
        """The connection, opened first if needed; safe to call concurrently."""
        if self.connection is not None:
            return self.connection
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.connection is None:
                self.connection = await self._open()
                self.connection.reconnect_callbacks.add(self._on_reconnect)
                log.debug("%s connection to %s open", self.role, self.node)
        return self.connection

    async def _open(self) -> _RotatingConnection:
        delay = self._connect_retry_delay
        started = time.monotonic()
        count = len(self._urls)
        tried: list[str] = []
        for attempt in range(1, self._connect_attempts + 1):
            index = (self._start + attempt - 1) % count
            node = describe_url(str(self._urls[index]))
            tried.append(node)
            connection = _RotatingConnection(
                self._urls,
                index,
                self._on_transport,
                reconnect_interval=self._reconnect_interval,
                client_properties={
                    "connection_name": (
                        f"aqueue {self.role} {socket.gethostname()} pid {os.getpid()}"
                    )
                },
            )
            try:
                await connection.connect(timeout=self._connect_timeout)
                return connection
            except (
                aiormq.exceptions.AuthenticationError,
                aiormq.exceptions.ProbableAuthenticationError,
            ) as exc:
                await _close_quietly(connection)
                raise BrokerConnectionError(
                    f"RabbitMQ at {node} refused the credentials: {exc}"
                ) from None
            except aiormq.exceptions.InvalidFrameError as exc:
                await _close_quietly(connection)
                if "Connection.Close" not in str(exc):
                    raise
                # RabbitMQ answers connection.open with connection.close (aiormq keeps no
                # reply text): the vhost is missing or the user may not use it.
                url = self._urls[index]
                raise BrokerConnectionError(
                    f"RabbitMQ at {node} refused to open vhost {url.path[1:] or '/'!r} for user "
                    f"{url.user or 'guest'!r}: the vhost does not exist or the user has no "
                    "permissions on it (rabbitmqctl list_vhosts, list_permissions)"
                ) from None
            except CONNECTION_ERRORS_OR_TIMEOUT as exc:
                await _close_quietly(connection)
                reason = describe_error(exc)
                if attempt == self._connect_attempts:
                    nodes = ", ".join(dict.fromkeys(tried))
                    raise BrokerConnectionError(
                        f"cannot connect to RabbitMQ at {nodes} "
                        f"({attempt} attempts in {time.monotonic() - started:.1f} s): {reason}"
                    ) from None
                if count > 1 and attempt % count:
                    wait = 0.0  # another node may answer at once
                else:
                    wait, delay = delay, delay * 2
                log.warning(
                    "cannot connect to RabbitMQ at %s (attempt %d of %d): %s; %s",
                    node,
                    attempt,
                    self._connect_attempts,
                    reason,
                    f"retrying in {wait:.1f} s" if wait else "trying the next node",
                )
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def existing_channel(self, purpose: str) -> AbstractRobustChannel | None:
        """The channel kept for ``purpose`` if it was opened, without waiting."""
        return self._channels.get(purpose)

    async def channel(self, purpose: str, *, confirms: bool = False) -> AbstractRobustChannel:
        """A robust channel kept for one ``purpose`` (``"publish"``, ``"topology"``)."""
        channel = self._channels.get(purpose)
        if channel is not None:
            return channel
        if self._channel_lock is None:
            self._channel_lock = asyncio.Lock()
        async with self._channel_lock:
            channel = self._channels.get(purpose)
            while channel is None:
                connection = await self.connect()
                # aio-pika refuses to open a channel while it reconnects: wait for it (the
                # callers bound the wait).
                await connection.connected.wait()
                try:
                    channel = connection.channel(
                        publisher_confirms=confirms, on_return_raises=confirms
                    )
                    await channel.initialize()
                except _CHANNEL_OPEN_ERRORS as exc:
                    log.debug("opening a %s channel failed (%r); retrying", purpose, exc)
                    channel = None
                    await asyncio.sleep(0.1)
            self._channels[purpose] = channel
        return channel

    async def plain_channel(self) -> aiormq.abc.AbstractChannel:
        """A plain (not robust) channel for passive declares: a missing queue closes it,
        and only it; made anew after that."""
        channel = self._plain_channel
        if channel is None or channel.is_closed:
            connection = await self.connect()
            await connection.connected.wait()  # not ready(): that also waits while blocked
            transport = connection.transport
            assert transport is not None
            channel = self._plain_channel = await transport.connection.channel(
                publisher_confirms=False
            )
        return channel

    @contextlib.asynccontextmanager
    async def temporary_channel(self) -> AsyncIterator[aiormq.abc.AbstractChannel]:
        """A channel of its own for one operation (dead-letter reads), closed after it."""
        connection = await self.connect()
        channel = connection.channel(publisher_confirms=False)
        await channel.initialize()
        try:
            yield await channel.get_underlay_channel()
        finally:
            await channel.close()

    def _on_transport(self, transport: aiormq.abc.AbstractConnection) -> None:
        # Each connect may reach another node, of another version (a rolling upgrade).
        version = server_version_of(getattr(transport, "server_properties", None))
        if version != self.server_version:
            log.debug("%s connection: RabbitMQ %s", self.role, format_version(version))
        self.server_version = version
        # A new connection starts unblocked; watch it for RabbitMQ's alarms.
        if self.blocked_reason is not None:
            self._set_unblocked()
        watch_flow_control(transport, self._set_blocked, self._set_unblocked)

    def _set_blocked(self, reason: str) -> None:
        if self.blocked_reason is not None:
            return
        self.blocked_reason = reason
        self._blocked_since = time.monotonic()
        if self._unblocked is None:
            self._unblocked = asyncio.Event()
        self._unblocked.clear()
        log.warning(
            "RabbitMQ at %s blocked the %s connection (%s): it stops reading it until the "
            "alarm clears; sends wait up to publish_timeout and then raise BrokerBlockedError",
            self.node,
            self.role,
            reason,
        )
        self._on_event("blocked")

    def _set_unblocked(self) -> None:
        if self.blocked_reason is None:
            return
        self.blocked_reason = None
        if self._unblocked is not None:
            self._unblocked.set()
        log.warning(
            "RabbitMQ at %s unblocked the %s connection after %.1f s",
            self.node,
            self.role,
            time.monotonic() - self._blocked_since,
        )
        self._on_event("unblocked")

    def _on_reconnect(self, *_: Any) -> None:
        log.warning("%s connection reconnected to RabbitMQ at %s", self.role, self.node)
        self._on_event("reconnected")

    async def close(self) -> None:
        connection, self.connection = self.connection, None
        self._channels.clear()
        self._plain_channel = None
        if self.blocked_reason is not None:
            self._set_unblocked()
        if connection is not None:
            await connection.close()


async def _close_quietly(connection: AbstractRobustConnection) -> None:
    try:
        await connection.close()
    except Exception as exc:  # a half-open connection may fail to close; it is gone anyway
        log.debug("closing a failed connection: %r", exc)
