"""The ``aqueue`` command line.

Commands: ``worker`` runs actors; ``queues``, ``dlq ls|show|replay|purge``, ``send`` and
``check`` are for operators. Errors are one line on stderr, ``aqueue: error: ...``
(``aqueue --debug COMMAND`` shows the traceback instead).

Exit codes: 0 success (including a graceful stop on SIGTERM or SIGINT), 1 a runtime
error (for example the broker cannot be reached, a queue or dead letter does not exist,
``check`` found a problem, a confirmation was declined), 2 a usage error (bad options
or arguments, modules that cannot be imported, no actors, arguments that do not fit the
actor), 130 interrupted by Ctrl-C (operator commands).

This package holds the click group ``main``; each command is in a module of its own:
``worker_command`` (with ``supervisor`` for ``--processes`` and ``metrics`` for
``--metrics-port``), ``ops`` (``queues``, ``send``, ``check``), ``dlq_commands``,
``schedule_commands`` (``scheduler``, ``schedules``) and ``dashboard_command``.
"""

from __future__ import annotations

import click

from .. import __version__
from ._common import (
    DURATION,
    EXIT_INTERRUPTED,
    EXIT_RUNTIME_ERROR,
    EXIT_USAGE_ERROR,
    log,
)
from ._operator import BROKER_HELP, broker_option, json_option
from .dashboard_command import dashboard
from .dlq_commands import dlq, dlq_ls, dlq_purge, dlq_replay, dlq_show
from .metrics import MULTIPROCESS_ENV
from .ops import check, queues, send
from .schedule_commands import scheduler, schedules
from .supervisor import SUPERVISED_ENV
from .worker_command import worker

__all__ = [
    "BROKER_HELP",
    "DURATION",
    "EXIT_INTERRUPTED",
    "EXIT_RUNTIME_ERROR",
    "EXIT_USAGE_ERROR",
    "MULTIPROCESS_ENV",
    "SUPERVISED_ENV",
    "broker_option",
    "check",
    "dashboard",
    "dlq",
    "dlq_ls",
    "dlq_purge",
    "dlq_replay",
    "dlq_show",
    "json_option",
    "log",
    "main",
    "queues",
    "scheduler",
    "schedules",
    "send",
    "worker",
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="aqueue")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs of errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """aqueue: an asyncio-native task queue for RabbitMQ."""
    ctx.obj = {"debug": debug}


for _command in (worker, queues, dlq, send, check, scheduler, schedules, dashboard):
    main.add_command(_command)
del _command
