"""Which aiormq and socket errors mean "the connection or channel is gone"."""

from __future__ import annotations

import asyncio

import aiormq

# Errors that mean "the connection or channel is gone, wait for it to come back".
CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,
    ConnectionError,
    OSError,
)
CONNECTION_ERRORS_OR_TIMEOUT: tuple[type[Exception], ...] = (
    *CONNECTION_ERRORS,
    asyncio.TimeoutError,
)


def describe_error(exc: BaseException) -> str:
    """The first line of an error's text, for one-line logs and messages."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, asyncio.TimeoutError):
        text = "timed out"
    return text.splitlines()[0] if text else type(exc).__name__
