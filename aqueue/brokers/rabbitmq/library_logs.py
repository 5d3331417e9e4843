"""Routine reconnects without ERROR lines: quieter records from aiormq and aio-pika.

When a RabbitMQ node shuts down or restarts (one per node in a rolling restart), aiormq
logs the server's close at ERROR and then a traceback when its reader stops, and aio-pika
logs an ERROR for each channel callback that finds the connection closed. aqueue
reconnects by itself and says so in a warning of its own, so these records become
WARNING lines without a traceback: an operator who alerts on ERROR is not paged by a
routine restart. Records of any other error are left as they are.
"""

from __future__ import annotations

import logging

from .errors import CONNECTION_ERRORS

__all__ = ["quiet_routine_reconnects"]

#: Connection.Close reply code of a node that shuts down or closes connections on purpose.
CONNECTION_FORCED = 320

_LOGGERS = ("aiormq.connection", "aio_pika.tools")


class _RoutineReconnects(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else ""
        args = record.args if isinstance(record.args, tuple) else ()
        if message.startswith("Unexpected connection close from remote"):
            if len(args) >= 2 and args[1] == CONNECTION_FORCED:
                _as_warning(record)
        elif message.startswith("Cancelling cause reader exited abnormally"):
            error = record.exc_info[1] if record.exc_info else None
            if isinstance(error, CONNECTION_ERRORS):
                _as_warning(record)
        elif message.startswith("Callback %r error") and len(args) >= 3:
            raised = args[2]
            if isinstance(raised, CONNECTION_ERRORS) or (
                isinstance(raised, RuntimeError) and "closed" in str(raised)
            ):
                _as_warning(record)
        return True


def _as_warning(record: logging.LogRecord) -> None:
    if record.levelno > logging.WARNING:
        record.levelno = logging.WARNING
        record.levelname = logging.getLevelName(logging.WARNING)
    record.exc_info = None
    record.exc_text = None


_FILTER = _RoutineReconnects()


def quiet_routine_reconnects() -> None:
    """Install the filter on the loggers of aiormq and aio-pika that log reconnects (once)."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
