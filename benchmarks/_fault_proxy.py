"""A TCP proxy for the fault report's network faults, on an event loop of its own thread.

A copy of ``tests/_proxy.py`` (benchmarks do not import tests) with two changes:

- ``silent``: new connections are accepted and then never answered (no upstream
  connection: a frozen VM, a node out of file descriptors). Such a connection stays silent
  even after ``silent`` is turned off; only the client's own timeout gets it out.
- while ``blackholed``, a side that closes is not told to the other (a partition lets no
  reset through either): the other side finds out from its heartbeats, or when the
  blackhole ends.

It runs in a thread so that the producer of the same process, sending hundreds of
messages a second, adds no latency to the bytes of the worker processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any

from yarl import URL


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.refusing = False  # new connections are closed at once
        self.blackholed = False  # bytes are swallowed, both ways, connections stay open
        self.silent = False  # new connections are accepted, then never answered
        self.latency = 0.0  # seconds added to every chunk, both ways
        self.accepted = 0
        self.resets = 0
        self._closing = False
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._held: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        self.reset()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def reset(self) -> None:
        """Close every proxied (and held) connection now: both sides see the socket go."""
        self.resets += 1
        for client, upstream in list(self._pairs):
            for writer in (client, upstream):
                with contextlib.suppress(Exception):
                    writer.transport.abort()
        self._pairs.clear()
        for writer in list(self._held):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._held.clear()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        self.accepted += 1
        if self.silent:
            self._held.add(writer)
            self._spawn(self._swallow(reader, writer))
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            self._spawn(self._pipe(src, dst, pair))

    async def _swallow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.read(65536):
                pass
        except OSError:
            pass
        finally:
            self._held.discard(writer)
            with contextlib.suppress(Exception):
                writer.transport.abort()

    async def _pipe(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while data := await src.read(65536):
                if self.latency:
                    await asyncio.sleep(self.latency)
                if self.blackholed:
                    continue
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            # A partition carries no reset: the other side hears of this close only once
            # the blackhole ends (or its heartbeats tell it first). A poll: ``blackholed`` is
            # a plain attribute, set from another thread.
            while self.blackholed and not self._closing and pair in self._pairs:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            self._pairs.discard(pair)
            for writer in pair:
                with contextlib.suppress(Exception):
                    writer.transport.abort()


class ProxyThread:
    """A :class:`FaultProxy` served by an event loop in a thread of its own.

    Set ``blackholed``, ``silent`` or ``refusing`` on :attr:`proxy` from any thread (one
    attribute store); call :meth:`reset` rather than ``proxy.reset()``.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.proxy = FaultProxy(target_host, target_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="fault-proxy", daemon=True
        )

    def start(self) -> ProxyThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.proxy.start(), self._loop).result(10)
        return self

    def url(self, target_url: str, query: dict[str, str] | None = None) -> str:
        """``target_url`` (credentials, vhost, query kept) pointed at the proxy."""
        url = URL(target_url).with_host("127.0.0.1").with_port(self.proxy.port)
        if query:
            url = url.update_query(query)
        return str(url)

    def reset(self) -> None:
        async def reset() -> None:
            self.proxy.reset()

        asyncio.run_coroutine_threadsafe(reset(), self._loop).result(10)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.proxy.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()
