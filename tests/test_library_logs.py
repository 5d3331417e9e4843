"""A routine reconnect logs no ERROR and no traceback from aiormq or aio-pika; other errors stay."""

from __future__ import annotations

import logging
import sys

import aiormq
import pytest

import aqueue  # noqa: F401 (importing the RabbitMQ broker installs the filter)

# aiormq's record of a Connection.Close from the server.
CLOSE_MESSAGE = (
    'Unexpected connection close from remote "%s", Connection.Close(reply_code=%r, reply_text=%r)'
)


def _emit(
    logger_name: str, level: int, msg: str, args: tuple[object, ...], exc: BaseException | None
) -> logging.LogRecord:
    logger = logging.getLogger(logger_name)
    exc_info = None if exc is None else (type(exc), exc, exc.__traceback__)
    record = logger.makeRecord(logger_name, level, __file__, 1, msg, args, exc_info)
    for f in logger.filters:
        f.filter(record) if isinstance(f, logging.Filter) else f(record)  # type: ignore[operator]
    return record


@pytest.mark.parametrize(
    ("logger", "level", "msg", "args", "exc"),
    [
        (
            "aiormq.connection",
            logging.ERROR,
            CLOSE_MESSAGE,
            ("conn", 320, "CONNECTION_FORCED - broker forced connection closure"),
            None,
        ),
        (
            "aiormq.connection",
            logging.WARNING,
            "Cancelling cause reader exited abnormally",
            (),
            ConnectionResetError("reset by peer"),
        ),
        (
            "aio_pika.tools",
            logging.ERROR,
            "Callback %r error: %s: %s",
            ("cb", "RuntimeError", RuntimeError("<Connection: ...> closed")),
            None,
        ),
    ],
)
def test_routine_reconnect_records_become_warnings_without_traceback(
    logger: str, level: int, msg: str, args: tuple[object, ...], exc: BaseException | None
) -> None:
    try:
        if exc is not None:
            raise exc
    except BaseException as raised:  # a traceback, as the libraries log it
        exc = raised
    record = _emit(logger, level, msg, args, exc)
    assert record.levelno == logging.WARNING
    assert record.exc_info is None


def test_other_errors_keep_their_level_and_traceback() -> None:
    record = _emit(
        "aiormq.connection",
        logging.ERROR,
        CLOSE_MESSAGE,
        ("conn", 541, "INTERNAL_ERROR"),
        None,
    )
    assert record.levelno == logging.ERROR
    try:
        raise ValueError("a malformed frame")
    except ValueError as exc:
        record = _emit(
            "aiormq.connection",
            logging.WARNING,
            "Cancelling cause reader exited abnormally",
            (),
            exc,
        )
    assert record.exc_info is not None and record.exc_info[0] is ValueError
    assert sys.modules["aqueue.brokers.rabbitmq.library_logs"]
    assert aiormq.exceptions.AMQPConnectionError
