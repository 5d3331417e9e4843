"""How an operator command runs: its broker, its coroutine, its errors and its JSON output."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiormq
import click

from .._admin import AdminError
from .._loading import LoadError, load_broker
from ..broker import Broker
from ..brokers.rabbitmq import RabbitmqBroker
from ..errors import AqueueError, ValidationError
from ._common import EXIT_INTERRUPTED, EXIT_RUNTIME_ERROR, EXIT_USAGE_ERROR, fail

__all__ = [
    "BROKER_HELP",
    "broker_option",
    "echo_json",
    "json_option",
    "operate",
    "operator_broker",
]

T = TypeVar("T")

BROKER_HELP = (
    "MODULE or MODULE:ATTRIBUTE that builds the broker, as for `aqueue worker`; "
    "default: a broker on AQUEUE_BROKER_URL, else amqp://guest:guest@127.0.0.1:5672/."
)

broker_option = click.option(
    "--broker", "broker_spec", metavar="MODULE[:ATTRIBUTE]", help=BROKER_HELP
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _debug() -> bool:
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx is not None else None
    return bool(root is not None and isinstance(root.obj, dict) and root.obj.get("debug"))


def operator_broker(spec: str | None, *, attempts: int = 2) -> Broker:
    """The broker of ``--broker``, else one on the environment's URL; quick to give up."""
    try:
        broker = load_broker([spec]) if spec else RabbitmqBroker()
    except (LoadError, ValueError) as exc:
        fail(str(exc), EXIT_USAGE_ERROR)
    if isinstance(broker, RabbitmqBroker):
        broker.connect_attempts = min(broker.connect_attempts, attempts)
        broker.connect_retry_delay = min(broker.connect_retry_delay, 0.5)
    return broker


def operate(work: Callable[[], Awaitable[T]]) -> T:
    """Run an operator command's coroutine; errors become one line and an exit code."""
    debug = _debug()
    # The error itself is the one line printed; logs only with --debug.
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.CRITICAL,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return asyncio.run(_main_of(work))
    except AdminError as exc:
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", EXIT_INTERRUPTED)
    except (LoadError, ValidationError) as exc:
        if debug:
            raise
        fail(str(exc), EXIT_USAGE_ERROR)
    except (AqueueError, aiormq.exceptions.AMQPError, OSError, TimeoutError) as exc:
        if debug:
            raise
        fail(_describe(exc), EXIT_RUNTIME_ERROR)
    except Exception as exc:
        if debug:
            raise
        fail(
            f"unexpected {_describe(exc)} (run `aqueue --debug ...` for the traceback)",
            EXIT_RUNTIME_ERROR,
        )


async def _main_of(work: Callable[[], Awaitable[T]]) -> T:
    return await work()


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, AqueueError):
        return text
    return f"{type(exc).__name__}: {text}"


def echo_json(value: Any) -> None:
    """Print ``value`` as indented JSON."""
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))
