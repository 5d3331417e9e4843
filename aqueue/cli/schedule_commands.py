"""``aqueue scheduler`` (run the schedules alone) and ``aqueue schedules`` (list them)."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import click

from .._loading import LoadError, load_broker
from .._logging import configure_logging
from .._schedule_state import schedule_rows
from .._scheduler import Scheduler
from ..broker import Broker
from ..errors import AqueueError
from ._common import EXIT_RUNTIME_ERROR, EXIT_USAGE_ERROR, fail
from ._operator import echo_json, json_option, operate

__all__ = ["scheduler", "schedules"]

log = logging.getLogger("aqueue.cli")


def _broker_with_schedules(module: str) -> Broker:
    try:
        broker = load_broker([module])
    except LoadError as exc:
        fail(str(exc), EXIT_USAGE_ERROR)
    if not broker.schedules:
        fail(f"{module} declares no schedules (aqueue.schedule(actor, ...))", EXIT_USAGE_ERROR)
    return broker


@click.command()
@click.argument("module", metavar="MODULE[:BROKER]")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
    help="Logging level.",
)
def scheduler(module: str, log_level: str) -> None:
    """Run the schedules of MODULE without consuming any queue.

    Every `aqueue worker` runs them too (unless --no-scheduler): of all the processes
    that run a schedule, one at a time fires its ticks. SIGTERM or SIGINT stops; another
    process takes over at once.
    """
    configure_logging(log_level, "text")
    broker = _broker_with_schedules(module)
    try:
        asyncio.run(_run_scheduler(broker))
    except AqueueError as exc:
        fail(str(exc), EXIT_RUNTIME_ERROR)


async def _run_scheduler(broker: Broker) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    running = Scheduler(broker)
    try:
        await running.start()
        log.info(
            "scheduler started: schedules %s",
            ", ".join(
                f"{name} ({'active' if active else 'standing by'})"
                for name, active in running.active.items()
            ),
        )
        await stop.wait()
        log.info("scheduler stopping")
    finally:
        await running.stop()
        await broker.close()


@click.command()
@click.argument("module", metavar="MODULE[:BROKER]")
@json_option
def schedules(module: str, as_json: bool) -> None:
    """List the schedules of MODULE: expression, next tick, and their schedulers.

    LAST TICK is the last tick fired; SCHEDULERS is how many processes run a schedule
    (the consumers of its lease queue); STATE is "active (HOST pid PID)" when one of them
    holds the lease and fires the ticks, "no scheduler" when none runs (the lease waits
    in its queue), "never run".
    """
    broker = _broker_with_schedules(module)

    async def work() -> list[dict[str, Any]]:
        try:
            return await _schedule_rows(broker)
        finally:
            await broker.close()

    rows = operate(work)
    if as_json:
        echo_json(rows)
        return
    header = ("SCHEDULE", "EXPRESSION", "NEXT TICK", "SCHEDULERS", "STATE")
    table = [header] + [
        (r["name"], r["expression"], r["next_tick"], str(r["schedulers"]), r["state"]) for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


async def _schedule_rows(broker: Broker) -> list[dict[str, Any]]:
    return [row.asdict() for row in await schedule_rows(broker)]
