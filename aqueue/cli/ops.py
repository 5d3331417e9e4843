"""The operator commands that look at queues and send: ``queues``, ``send`` and ``check``.

Thin click commands: the work is in ``aqueue._admin`` (operations) and
``aqueue._admin_format`` (tables), run through ``_operator.operate``.
"""

from __future__ import annotations

from typing import Any

import click

from .. import _admin, _admin_format
from .._admin import AdminError
from .._loading import LoadError
from ..broker import Broker
from ..brokers.rabbitmq import RabbitmqBroker
from ..brokers.rabbitmq.dramatiq_compat import dramatiq_compat_of, enable_dramatiq_compat
from ..brokers.rabbitmq.management import MANAGEMENT_URL_ENVIRONMENT_VARIABLE
from ._common import DURATION, EXIT_USAGE_ERROR, fail
from ._operator import broker_option, echo_json, json_option, operate, operator_broker

__all__ = ["check", "queues", "send"]

dramatiq_option = click.option(
    "--dramatiq",
    is_flag=True,
    help="Take the broker as one with dramatiq_compat=True (the default for such a broker): "
    "queues shared with Dramatiq, which keeps its delayed messages in QUEUE.DQ.",
)


def _compat(broker: Broker, dramatiq: bool) -> bool:
    """Whether to treat ``broker`` as a Dramatiq compat broker (made one if asked)."""
    if dramatiq and isinstance(broker, RabbitmqBroker) and not dramatiq_compat_of(broker):
        enable_dramatiq_compat(broker)  # only this command's process sees the change
    return dramatiq_compat_of(broker)


@click.command()
@click.argument("queue_names", nargs=-1, metavar="[QUEUE ...]")
@broker_option
@json_option
@click.option(
    "--unacked",
    is_flag=True,
    help="Also count unacknowledged messages (held by workers), from the management HTTP API.",
)
@click.option(
    "--management-url",
    metavar="URL",
    envvar=MANAGEMENT_URL_ENVIRONMENT_VARIABLE,
    help="The management API for --unacked, e.g. http://rabbit:15672/ (credentials and vhost "
    "of the broker URL unless given); default: port 15672 (15671 for amqps) of each broker "
    f"host. Env: {MANAGEMENT_URL_ENVIRONMENT_VARIABLE}.",
)
@dramatiq_option
def queues(
    queue_names: tuple[str, ...],
    broker_spec: str | None,
    as_json: bool,
    unacked: bool,
    management_url: str | None,
    dramatiq: bool,
) -> None:
    """Ready messages, consumers and dead letters of each QUEUE.

    Without QUEUE names, the queues of the actors of --broker's module. Counts come
    from passive declares: no management plugin needed. A queue that does not
    exist is shown as missing. With --unacked, also the messages delivered and not
    acknowledged yet, which only the management plugin's HTTP API counts: null (and
    the reason) when it cannot be asked. For a broker with dramatiq_compat=True (or
    with --dramatiq), also Dramatiq's delayed messages waiting in QUEUE.DQ.
    """
    broker = operator_broker(broker_spec)
    dramatiq = _compat(broker, dramatiq)
    try:
        names = _admin.queue_names_of(broker, queue_names)
        management = _admin.management_api(broker, management_url) if unacked else None
    except AdminError as exc:
        fail(str(exc), exc.exit_code)

    async def work() -> list[_admin.QueueRow]:
        try:
            return await _admin.queue_rows(broker, names, management=management, dramatiq=dramatiq)
        finally:
            await broker.close()

    rows = operate(work)
    if as_json:
        echo_json([row.asdict() for row in rows])
    else:
        click.echo(_admin_format.queues_table(rows))
        note = _admin_format.unacked_note(rows)
        if note is not None:
            click.echo(note, err=True)


@click.command()
@click.argument("actor_spec", metavar="MODULE:ACTOR")
@click.option("--args", "args_json", metavar="JSON", help="Positional arguments, a JSON array.")
@click.option("--kwargs", "kwargs_json", metavar="JSON", help="Keyword arguments, a JSON object.")
@click.option(
    "--options",
    "options_json",
    metavar="JSON",
    help="Message options, a JSON object: '{\"max_retries\": 0}'.",
)
@click.option("--delay", type=DURATION, default=None, help="Deliver after this long: 30s, 5m, 90.")
def send(
    actor_spec: str,
    args_json: str | None,
    kwargs_json: str | None,
    options_json: str | None,
    delay: float | None,
) -> None:
    """Send a message to the actor MODULE:ACTOR, checked against its signature like send().

    The message goes through the actor's own broker. Prints the message id.
    """
    try:
        actor = _admin.load_actor(actor_spec)
        args = _admin.parse_json("--args", args_json, list)
        kwargs = _admin.parse_json("--kwargs", kwargs_json, dict)
        options = _admin.parse_json("--options", options_json, dict)
    except LoadError as exc:
        fail(str(exc), EXIT_USAGE_ERROR)
    except AdminError as exc:
        fail(str(exc), exc.exit_code)
    if isinstance(actor.broker, RabbitmqBroker):
        actor.broker.connect_attempts = min(actor.broker.connect_attempts, 2)

    async def work() -> Any:
        return await _admin.send(actor, args=args, kwargs=kwargs, options=options, delay=delay)

    message = operate(work)
    click.echo(f"sent {message.message_id} to {message.queue_name}")


@click.command()
@click.argument("queue_names", nargs=-1, metavar="[QUEUE ...]")
@broker_option
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds to wait for the broker.",
)
@click.option(
    "--consumers/--no-consumers",
    default=True,
    show_default=True,
    help="Fail when a queue has no consumer (no worker consumes it).",
)
@dramatiq_option
def check(
    queue_names: tuple[str, ...],
    broker_spec: str | None,
    timeout: float,
    consumers: bool,
    dramatiq: bool,
) -> None:
    """Exit 0 if the broker answers, the topology is in place and workers consume the
    queues; else 1 with the reason.

    Checks the queues of --broker's actors and the QUEUEs named, their dead-letter
    queues and the delay delivery exchange, with passive declares (nothing is created),
    that the broker could declare each queue as it does (no queue exists with other
    arguments; found without declaring anything), and that each queue has at least one
    consumer (--no-consumers: not that, e.g. in a process that only sends). For a broker
    with dramatiq_compat=True (or with --dramatiq), also that QUEUE.DQ exists and is
    consumed, and prints its backlog. For container health checks.
    """
    broker = operator_broker(broker_spec, attempts=1)
    _compat(broker, dramatiq)

    async def work() -> list[str]:
        try:
            return await _admin.check(broker, queue_names, timeout=timeout, consumers=consumers)
        finally:
            await broker.close()

    for note in operate(work):
        click.echo(note)
    click.echo("ok")
