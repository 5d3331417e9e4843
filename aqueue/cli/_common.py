"""What every command shares: exit codes, the ``aqueue.cli`` logger, one-line errors, DURATION."""

from __future__ import annotations

import logging
import sys
from typing import Any, NoReturn

import click

from .._admin_format import parse_duration

__all__ = [
    "DURATION",
    "EXIT_INTERRUPTED",
    "EXIT_RUNTIME_ERROR",
    "EXIT_USAGE_ERROR",
    "fail",
    "log",
]

# One logger for the whole command line, whichever module of it logs.
log = logging.getLogger("aqueue.cli")

EXIT_RUNTIME_ERROR = 1
EXIT_USAGE_ERROR = 2
EXIT_INTERRUPTED = 130


def fail(message: str, code: int) -> NoReturn:
    """Print ``aqueue: error: MESSAGE`` on stderr and exit with ``code``."""
    click.echo(f"aqueue: error: {message}", err=True)
    sys.exit(code)


class _Duration(click.ParamType):  # type: ignore[type-arg]  # generic in click 8.2+
    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


#: A click parameter type: ``7d``, ``12h``, ``30m``, ``45s``, ``1h30m`` or seconds.
DURATION = _Duration()
