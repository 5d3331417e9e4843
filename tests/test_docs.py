"""The documentation: every example runs as shown, and the site builds with ``--strict``.

The examples in ``docs/examples/`` are written as a user's application, with readable queue
names ("emails", "orders", ...). Each test copies them into a directory of its own with
those names made unique (``"emails"`` becomes ``"emails-docs-1a2b3c4d"``), imports or runs
them against the real RabbitMQ, and deletes the queues (and their ``.XQ``) afterwards.

The pages show each example inline, as a copy marked with the file's name
(``<!-- docs/examples/tasks.py -->`` just before the fence), so that they read on GitHub
too; a copy that differs from its file fails here, and ``python scripts/sync_docs.py``
copies the files in again.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import json
import os
import re
import runpy
import shlex
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import aio_pika
import click
import pytest

import aqueue
import aqueue.cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
T = TypeVar("T")
RABBITMQ_URL = os.environ.get("AQUEUE_TEST_URL", "amqp://guest:guest@127.0.0.1:5672/")

#: The queue names the examples use; every test gets unique ones in their place.
EXAMPLE_QUEUES = (
    "greetings",
    "emails",
    "reports",
    "orders",
    "payments",
    "webhooks",
    "reminders",
    "exports",
    "thumbnails",
    "signups",
    "credits",
    "invoices",
)

#: Files outside docs/examples/ that pages show, and the test module that runs each.
TESTED_ELSEWHERE = {"examples/fastapi_app/app.py": "tests/test_fastapi.py"}

EXAMPLE_FILES = sorted(EXAMPLES.glob("*.py"))

_spec = importlib.util.spec_from_file_location("sync_docs", ROOT / "scripts" / "sync_docs.py")
assert _spec is not None and _spec.loader is not None
sync_docs = importlib.util.module_from_spec(_spec)
sys.modules["sync_docs"] = sync_docs  # its dataclass looks its module up
_spec.loader.exec_module(sync_docs)


# -- helpers ----------------------------------------------------------------------------------


class Examples:
    """The examples, copied with queue names of this test's own, importable by name."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        suffix = uuid.uuid4().hex[:8]
        self.queues = {name: f"{name}-docs-{suffix}" for name in EXAMPLE_QUEUES}
        for path in EXAMPLE_FILES:
            text = path.read_text()
            for name, unique in self.queues.items():
                text = text.replace(f'"{name}"', f'"{unique}"').replace(f"'{name}'", f"'{unique}'")
            (directory / path.name).write_text(text)

    def q(self, name: str) -> str:
        return self.queues[name]

    def load(self, name: str, *, live: bool = True) -> ModuleType:
        """Import example ``name``; a ``live`` one must use only this test's queues."""
        module = importlib.import_module(name)
        if live:
            for value in vars(module).values():
                if isinstance(value, aqueue.Actor):
                    assert value.queue_name in self.queues.values(), (
                        f"{name}.{value.actor_name} would use the shared queue "
                        f"{value.queue_name!r}; add it to EXAMPLE_QUEUES"
                    )
        return module

    def env(self) -> dict[str, str]:
        """The environment for running the examples in a subprocess."""
        return {
            **os.environ,
            "AQUEUE_BROKER_URL": RABBITMQ_URL,
            "PYTHONPATH": os.pathsep.join(
                [str(self.directory), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
            "PYTHONUNBUFFERED": "1",
        }


@pytest.fixture
async def examples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Examples]:
    """The examples, with a fresh default broker; their queues are deleted afterwards."""
    monkeypatch.setenv("AQUEUE_BROKER_URL", RABBITMQ_URL)
    monkeypatch.syspath_prepend(str(tmp_path))
    for path in EXAMPLE_FILES:  # modules of the same names imported by something else
        if path.stem in sys.modules:
            monkeypatch.delitem(sys.modules, path.stem)
    copies = Examples(tmp_path)
    previous = aqueue.get_broker()
    aqueue.set_broker(aqueue.RabbitmqBroker(RABBITMQ_URL))
    try:
        yield copies
    finally:
        brokers = {id(aqueue.get_broker()): aqueue.get_broker()}
        for name, module in list(sys.modules.items()):
            if str(getattr(module, "__file__", "")).startswith(str(tmp_path)):
                for value in vars(module).values():
                    if isinstance(value, aqueue.Broker):
                        brokers[id(value)] = value
                del sys.modules[name]
        for broker in brokers.values():
            await broker.close()
        aqueue.set_broker(previous)
        connection = await aio_pika.connect(RABBITMQ_URL)
        async with connection, connection.channel() as channel:
            for queue_name in copies.queues.values():
                await channel.queue_delete(queue_name)
                await channel.queue_delete(queue_name + ".XQ")


async def exists(queue_name: str) -> bool:
    """Whether RabbitMQ has a queue of that name."""
    try:
        await count(queue_name)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return False
    return True


def await_(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` from a synchronous test."""
    return asyncio.run(coroutine)


async def count(queue_name: str) -> int:
    """Messages ready in ``queue_name``, read on a connection of the test's own."""
    connection = await aio_pika.connect(RABBITMQ_URL)
    async with connection, connection.channel() as channel:
        queue = await channel.declare_queue(queue_name, passive=True)
        return int(queue.declaration_result.message_count or 0)


@contextlib.asynccontextmanager
async def cli_worker(examples: Examples, *args: str) -> AsyncIterator[WorkerProcess]:
    """``aqueue worker ARGS`` in the examples' directory; stopped with SIGTERM at the end."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aqueue",
        "worker",
        *args,
        cwd=examples.directory,
        env=examples.env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    worker = WorkerProcess(process)
    try:
        yield worker
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


class WorkerProcess:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.output = ""

    async def wait_for(self, *needles: str, timeout: float = 30) -> None:
        """Read the worker's output until every needle has appeared."""
        assert self.process.stdout is not None

        async def read() -> None:
            assert self.process.stdout is not None
            while not all(needle in self.output for needle in needles):
                line = await self.process.stdout.readline()
                if not line:
                    raise AssertionError(f"the worker exited early:\n{self.output}")
                self.output += line.decode()

        try:
            await asyncio.wait_for(read(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"not seen in {timeout} s: {needles}\n{self.output}") from None

    async def stop(self, signum: int = signal.SIGTERM, timeout: float = 30) -> int:
        self.process.send_signal(signum)
        rest, _ = await asyncio.wait_for(self.process.communicate(), timeout)
        self.output += rest.decode()
        assert self.process.returncode is not None
        return self.process.returncode


def fenced_blocks(markdown: str) -> Iterator[tuple[str, str]]:
    """(language, body) of every fenced code block, indented ones included."""
    fence = re.compile(r"^(\s*)(`{3,})(\w*)[^\n]*\n(.*?)^\1\2\s*$", re.MULTILINE | re.DOTALL)
    for match in fence.finditer(markdown):
        yield match.group(3), match.group(4)


# -- the pages --------------------------------------------------------------------------------


def test_every_python_block_is_a_copy_of_an_example_file() -> None:
    shown: set[str] = set()
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text()
        marked = {copy.shown: copy for copy in sync_docs.copies(text)}
        for language, body in fenced_blocks(text):
            if language not in ("python", "py", "python3"):
                continue
            copy = marked.get(textwrap.dedent(body))
            assert copy is not None, (
                f"{page.name}: a Python block without a <!-- docs/examples/<file>.py --> line "
                f"just before it (every Python block is a copy of a tested file):\n{body}"
            )
            path = copy.source
            assert (ROOT / path).is_file(), f"{page.name}: {path} does not exist"
            if path.startswith("docs/examples/"):
                shown.add(Path(path).name)
            else:  # a file of the repository, imported by a test of its own
                assert path in TESTED_ELSEWHERE, f"{page.name}: {path} is run by no test"
                module = path.removesuffix(".py").replace("/", ".")
                assert module in (ROOT / TESTED_ELSEWHERE[path]).read_text(), path
    assert shown == {path.name for path in EXAMPLE_FILES}, "examples not shown anywhere"


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda page: page.name)
def test_the_code_shown_is_the_example_files_text(page: Path) -> None:
    for copy in sync_docs.copies(page.read_text()):
        assert copy.shown == copy.expected, (
            f"docs/{page.name} shows an out-of-date copy of {copy.source}: "
            f"run `python scripts/sync_docs.py docs/{page.name}` to copy the file in again"
        )


def test_pages_show_code_rather_than_include_it() -> None:
    # Read on GitHub or in an editor, an include line shows no code.
    for page in sorted(DOCS.glob("*.md")):
        lines = [line for line in page.read_text().splitlines() if "--8<--" in line]
        assert not lines, (
            f"docs/{page.name} includes code by reference ({lines[0].strip()}): "
            f"run `python scripts/sync_docs.py docs/{page.name}` to show the code itself"
        )


def test_sync_docs_copies_files_into_marked_blocks() -> None:
    source = "docs/examples/first_actor.py"
    text = (ROOT / source).read_text()
    stale = f"Intro.\n\n<!-- {source} -->\n```python\nold\n```\n\n!!! note\n\n"
    stale += f"    <!-- {source} -->\n    ```python\n    old\n    ```\n"
    included = f'```python\n--8<-- "{source}"\n```\n'
    for page in (stale, included):
        synced = sync_docs.sync(page)
        assert [copy.shown for copy in sync_docs.copies(synced)] == [text] * page.count("```python")
        assert sync_docs.sync(synced) == synced
        assert "--8<--" not in synced and [lang for lang, _ in fenced_blocks(synced)] == [
            "python"
        ] * page.count("```python")


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda path: path.name)
def test_example_compiles(path: Path) -> None:
    compile(path.read_text(), str(path), "exec")


def test_mkdocs_build_is_strict_clean(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    api = (tmp_path / "api" / "index.html").read_text()
    for name in [
        "aqueue.actor.actor",
        "aqueue.Actor",
        "aqueue.RabbitmqBroker",
        "aqueue.InMemoryBroker",
        "aqueue.InMemoryBroker.fast_forward",
        "aqueue.Worker",
        "aqueue.asgi.lifespan",
        "aqueue.MessageContext",
        "aqueue.Middleware",
        "aqueue.SkipMessage",
        "aqueue.DeadLetter",
        "aqueue.broker.QueueInfo",
        "aqueue.TimeLimitExceeded",
        "aqueue.current_message",
        "aqueue.middleware.Retries",
    ]:
        assert f'id="{name}"' in api, name
    assert ":class:`" not in api and ":func:`" not in api and ":meth:`" not in api
    started = (tmp_path / "getting-started" / "index.html").read_text()
    assert "send_welcome_email" in started  # the examples are shown
    assert "aqueue.asgi.lifespan" in started  # ...from the repository's examples/ too
    for page in ["middleware", "testing", "deployment", "coming-from"]:
        assert (tmp_path / page / "index.html").is_file(), page
    assert 'class="mermaid"' in (tmp_path / "internals" / "index.html").read_text()
    assert not (tmp_path / "examples").exists()


def test_cli_options_and_defaults_are_the_documented_ones() -> None:
    page = (DOCS / "workers.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| `-")]
    for param in aqueue.cli.worker.params:
        if not isinstance(param, click.Option) or param.name == "help":
            continue
        row = next((r for r in rows if f"`{param.opts[-1]}`" in r), None)
        assert row is not None, f"{param.opts[-1]} is not in the options table"
        for opt in param.opts:
            assert f"`{opt}`" in row, (opt, row)
        if isinstance(param.default, (int, float, str)):
            assert f"`{param.default}`" in row, (param.opts[-1], param.default, row)
    assert (aqueue.cli.EXIT_RUNTIME_ERROR, aqueue.cli.EXIT_USAGE_ERROR) == (1, 2)


def documented_headers() -> set[str]:
    page = (DOCS / "workers.md").read_text()
    return set(re.findall(r"^\| `(x-aqueue-[a-z-]+)` \|", page, re.MULTILINE))


def test_dead_letter_reasons_are_the_documented_ones() -> None:
    from aqueue import _failures
    from aqueue.middleware import age_limit

    page = (DOCS / "workers.md").read_text()
    documented = set(re.findall(r"^\| `([a-z-]+)` \|", page, re.MULTILINE))
    from aqueue.middleware import redeliveries

    reasons = {
        _failures.TOO_LARGE,
        redeliveries.REDELIVERY_LIMIT,
        _failures.FAILED,
        _failures.INVALID_ARGUMENTS,
        _failures.UNKNOWN_ACTOR,
        _failures.UNDECODABLE,
        age_limit.MAX_AGE_EXCEEDED,
    }
    assert reasons <= documented
    headers = _failures.failure_headers(
        _failures.FAILED, RuntimeError("boom"), queue_name="q", actor_name="a"
    )
    assert set(headers) <= documented_headers()


def test_default_middleware_is_the_documented_one() -> None:
    from aqueue.middleware import (
        AgeLimit,
        Callbacks,
        Groups,
        Limits,
        Pipelines,
        Priorities,
        Redeliveries,
        Replies,
        Retries,
        TimeLimit,
        default_middleware,
    )

    stack = default_middleware()
    assert [type(m) for m in stack] == [
        Redeliveries,
        AgeLimit,
        TimeLimit,
        Retries,
        Pipelines,
        Groups,
        Callbacks,
        Replies,
        Priorities,
        Limits,
    ]
    redeliveries, age_limit, time_limit, retries = stack[:4]
    assert isinstance(retries, Retries) and isinstance(time_limit, TimeLimit)
    assert isinstance(age_limit, AgeLimit) and isinstance(redeliveries, Redeliveries)
    assert (retries.max_retries, retries.min_backoff, retries.max_backoff) == (20, 15.0, 3600.0)
    assert (time_limit.time_limit, age_limit.max_age) == (600.0, None)
    assert redeliveries.max_redeliveries == 5
    table = [line for line in (DOCS / "middleware.md").read_text().splitlines() if "| `" in line]
    documented = [re.match(r"\| `(\w+)` \|", line) for line in table]
    assert [m.group(1) for m in documented if m] == [type(m).__name__ for m in stack]
    options = set().union(*(m.actor_options for m in stack))
    page = (DOCS / "middleware.md").read_text()
    for option in options:
        assert f"`{option}`" in page, option


# -- index.md ---------------------------------------------------------------------------------


async def test_first_actor_sent_by_the_script_and_run_by_the_cli(examples: Examples) -> None:
    sent = await asyncio.create_subprocess_exec(
        sys.executable, "first_actor.py", cwd=examples.directory, env=examples.env()
    )
    assert await sent.wait() == 0
    assert await count(examples.q("greetings")) == 1

    async with cli_worker(examples, "first_actor") as worker:
        await worker.wait_for("Hello, world!")
        assert await worker.stop() == 0, worker.output
    assert "worker stopped" in worker.output
    assert await count(examples.q("greetings")) == 0
    assert await count(examples.q("greetings") + ".XQ") == 0


# -- getting-started.md -----------------------------------------------------------------------


async def test_producer_then_cli_worker_as_in_getting_started(
    examples: Examples, capsys: pytest.CaptureFixture[str]
) -> None:
    producer = examples.load("producer")
    await producer.main()
    out = capsys.readouterr().out
    assert re.search(r"^queued [0-9a-f-]{36}$", out, re.MULTILINE), out
    assert "not sent: send_welcome_email(): argument 'user_id': Expected `int`, got `str`" in out
    assert await count(examples.q("emails")) == 1  # the invalid call published nothing
    assert await count(examples.q("reports")) == 1

    emails, reports = examples.q("emails"), examples.q("reports")
    async with cli_worker(examples, "tasks") as worker:
        await worker.wait_for(
            f"queues {emails} (prefetch 100), {reports} (prefetch 2), concurrency 100, threads 8",
            "welcome email sent to ada@example.com (user 42)",
            "report 7 built",
        )
        assert await worker.stop(signal.SIGINT) == 0, worker.output
    for queue_name in (emails, reports, emails + ".XQ", reports + ".XQ"):
        assert await count(queue_name) == 0, queue_name


async def test_drain_runs_a_worker_until_the_queue_is_empty(
    examples: Examples, capsys: pytest.CaptureFixture[str]
) -> None:
    drain = examples.load("drain")
    await drain.main()
    assert "welcome email sent to ada@example.com (user 42)" in capsys.readouterr().out
    assert await count(examples.q("emails")) == 0
    assert await count(examples.q("emails") + ".XQ") == 0


# -- actors.md --------------------------------------------------------------------------------


async def test_actor_forms(examples: Examples) -> None:
    forms = examples.load("actor_forms", live=False)
    default = aqueue.get_broker()
    assert (forms.ping.actor_name, forms.ping.queue_name) == ("ping", "default")
    assert forms.ping.broker is default and forms.ping.is_async
    assert forms.resize.actor_name == "thumbnails.resize"
    assert (forms.resize.queue_name, forms.resize.concurrency) == ("images", 4)
    assert not forms.resize.is_async
    assert forms.charge.broker is forms.billing_broker
    assert set(default.actors) == {"ping", "thumbnails.resize"}
    assert set(forms.billing_broker.actors) == {"charge"}
    assert await forms.ping() == "pong"  # called directly: no broker involved


def test_actor_forms_main_prints_what_its_comments_say(
    examples: Examples, capsys: pytest.CaptureFixture[str]
) -> None:
    path = examples.directory / "actor_forms.py"
    runpy.run_path(str(path), run_name="__main__")
    printed = capsys.readouterr().out.splitlines()
    commented = re.findall(r"^\s*print\(.*\)  # (.*)$", path.read_text(), re.MULTILINE)
    assert printed == commented


def test_names_are_refused_as_documented(
    examples: Examples, capsys: pytest.CaptureFixture[str]
) -> None:
    runpy.run_path(str(examples.directory / "names.py"))
    printed = capsys.readouterr().out.strip()
    page = (DOCS / "actors.md").read_text()
    shown = next(body for lang, body in fenced_blocks(page) if body.startswith("refused:"))
    assert printed == shown.strip()
    assert aqueue.get_broker().actors == {}


async def test_typed_arguments_arrive_as_their_types(
    examples: Examples, capsys: pytest.CaptureFixture[str]
) -> None:
    typed = examples.load("typed_arguments")
    await typed.main()
    sent = capsys.readouterr().out
    assert "not sent: ship_order(): argument 'order_id': Invalid UUID" in sent

    broker = aqueue.get_broker()
    orders = examples.q("orders")
    async with broker, aqueue.Worker(broker, queues=[orders]):
        await broker.join(orders, timeout=30)
    ran = capsys.readouterr().out
    page = (DOCS / "actors.md").read_text()
    shown = next(body for lang, body in fenced_blocks(page) if body.startswith("order "))
    assert ran.strip() == shown.strip()
    assert await count(orders + ".XQ") == 0


def test_message_format_is_the_documented_one(
    examples: Examples, capsys: pytest.CaptureFixture[str]
) -> None:
    runpy.run_path(str(examples.directory / "messages.py"))
    printed = json.loads(capsys.readouterr().out)
    page = (DOCS / "actors.md").read_text()
    shown = json.loads(next(body for lang, body in fenced_blocks(page) if lang == "json"))
    assert list(printed) == list(shown)  # the same fields, in the same order
    for field in ("actor_name", "args", "kwargs", "options"):
        assert printed[field] == shown[field]
    assert printed["queue_name"] == examples.q("emails")
    assert uuid.UUID(printed["message_id"]).version == 4
    assert isinstance(printed["message_timestamp"], int)
    for field in printed:
        assert f"| `{field}` |" in page, field


# -- workers.md -------------------------------------------------------------------------------


async def test_embedded_worker_runs_until_stopped(
    examples: Examples, capsys: pytest.CaptureFixture[str]
) -> None:
    tasks = examples.load("tasks")
    embedded = examples.load("embedded_worker")
    await tasks.send_welcome_email.send(1, "grace@example.com")
    await tasks.build_report.send(2)

    stop = asyncio.Event()
    running = asyncio.create_task(embedded.run_worker(stop))
    try:
        for queue_name in (examples.q("emails"), examples.q("reports")):
            await tasks.broker.join(queue_name, timeout=30)
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
    out = capsys.readouterr().out
    assert "welcome email sent to grace@example.com (user 1)" in out
    assert "report 2 built" in out
    assert tasks.broker.connection is None  # the example closes the broker


async def test_dead_letters_are_shown_and_requeued(
    examples: Examples, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = examples.load("dead_letters")
    await dead.main()
    printed = capsys.readouterr().out.strip()
    page = (DOCS / "middleware.md").read_text()
    shown = next(body for lang, body in fenced_blocks(page) if body.startswith("failed |"))
    assert printed == shown.strip()
    payments = examples.q("payments")
    assert await count(payments) == 1  # back in the work queue
    assert await count(payments + ".XQ") == 0

    # It fails again; its dead letter carries every documented header.
    async with dead.broker, aqueue.Worker(dead.broker, queues=[payments]):
        await dead.broker.join(payments, timeout=30)
        (letter,) = await dead.broker.dead_letters(payments)
    # Every documented header but the redelivery count, which only redelivered messages get.
    assert set(letter.headers) == documented_headers() - {"x-aqueue-redeliveries"}
    assert (letter.reason, letter.retries, letter.exception) == ("failed", 0, "CardDeclined")


# -- middleware.md ----------------------------------------------------------------------------


def shown_output(page: str, first_line: str) -> list[str]:
    """The lines of the text block of ``page`` that starts with ``first_line``."""
    text = (DOCS / page).read_text()
    return next(
        body for lang, body in fenced_blocks(text) if body.startswith(first_line)
    ).splitlines()


async def test_retries_until_success(
    examples: Examples, capsys: pytest.CaptureFixture[str]
) -> None:
    retries = examples.load("retries")
    await retries.main()
    printed = capsys.readouterr().out.splitlines()
    assert sorted(printed) == sorted(shown_output("middleware.md", "attempt 1"))
    assert await count(examples.q("webhooks")) == 0
    assert await count(examples.q("webhooks") + ".XQ") == 1  # the max_retries=0 one


async def test_delays_deliver_later_in_due_order(
    examples: Examples, capsys: pytest.CaptureFixture[str]
) -> None:
    delays = examples.load("delays")
    await delays.main()
    assert capsys.readouterr().out.splitlines() == [
        "reminder for user 43",
        "reminder for user 42",
    ]
    assert await count(examples.q("reminders")) == 0


async def test_priorities_overtake_messages_already_waiting(
    examples: Examples, capsys: pytest.CaptureFixture[str]
) -> None:
    priorities = examples.load("priorities")
    await priorities.main()
    printed = capsys.readouterr().out.splitlines()
    shown = shown_output("priorities-and-limits.md", "building refund 77")
    assert printed[0] == shown[0] and printed[3:] == shown[3:]
    assert sorted(printed[1:3]) == sorted(shown[1:3])  # one send_many: published together
    assert await count(examples.q("invoices")) == 0


async def test_callbacks_after_success_and_failure(
    examples: Examples, capsys: pytest.CaptureFixture[str]
) -> None:
    callbacks = examples.load("callbacks")
    await callbacks.main()
    printed = capsys.readouterr().out.splitlines()
    assert sorted(printed) == sorted(shown_output("middleware.md", "export of report"))
    assert await count(examples.q("exports") + ".XQ") == 1  # the failed export itself


async def test_a_pipeline_passes_each_result_to_the_next_step(
    examples: Examples, capsys: pytest.CaptureFixture[str]
) -> None:
    pipelines = examples.load("pipelines")
    await pipelines.main()
    printed = capsys.readouterr().out.splitlines()
    assert printed == shown_output("results.md", "mailing")


async def test_a_group_runs_its_callback_with_every_result(
    examples: Examples, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[aqueue.Group] = []
    send = aqueue.Group.send

    async def recording_send(self: aqueue.Group) -> aqueue.Group:
        sent.append(self)
        return await send(self)

    monkeypatch.setattr(aqueue.Group, "send", recording_send)
    groups = examples.load("groups")
    try:
        await groups.main()
    finally:
        connection = await aio_pika.connect(RABBITMQ_URL)
        async with connection, connection.channel() as channel:
            for group in sent:  # what the group leaves on RabbitMQ (for a day): not here
                await channel.queue_delete(f"aqueue.group.{group.group_id}")
    printed = capsys.readouterr().out.splitlines()
    assert printed == shown_output("results.md", "album holidays")


async def test_custom_middleware_stack(
    examples: Examples, capsys: pytest.CaptureFixture[str]
) -> None:
    middleware = examples.load("middleware")
    await middleware.main()
    assert re.fullmatch(r"make_thumbnail: done in 0\.\d s\n", capsys.readouterr().out)


# -- workers.md: a module that cannot be imported -----------------------------------------------


def test_a_broken_module_is_a_one_line_usage_error(tmp_path: Path) -> None:
    (tmp_path / "tasks.py").write_text(
        "import aqueue\n\n\n"
        '@aqueue.actor(queue_name="emails", concurrency=0)\n'
        "async def send_welcome_email(user_id: int, address: str) -> None: ...\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "aqueue", "worker", "tasks"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "AQUEUE_BROKER_URL": RABBITMQ_URL},
    )
    assert result.returncode == aqueue.cli.EXIT_USAGE_ERROR == 2
    (shown,) = shown_output("workers.md", "aqueue: error: importing")
    assert result.stderr.strip() == shown


# -- testing.md -------------------------------------------------------------------------------


async def test_in_memory_broker_skips_delays_and_backoffs(
    examples: Examples, capsys: pytest.CaptureFixture[str]
) -> None:
    in_memory = examples.load("in_memory")
    started = time.monotonic()
    await asyncio.wait_for(in_memory.main(), 10)
    assert time.monotonic() - started < 5  # a day's delay and two hour-long backoffs
    assert capsys.readouterr().out.splitlines() == shown_output("testing.md", "delayed: 1")


def pytest_commands() -> list[tuple[dict[str, str], list[str]]]:
    """(environment, arguments) of each ``$ pytest ...`` line of testing.md."""
    page = (DOCS / "testing.md").read_text()
    commands = []
    for language, body in fenced_blocks(page):
        if language != "console" or "pytest" not in body:
            continue
        for line in body.splitlines():
            words = shlex.split(line.removeprefix("$ ").partition("#")[0])
            env = dict(w.split("=", 1) for w in words[: words.index("pytest")])
            commands.append((env, words[words.index("pytest") + 1 :]))
    return commands


@pytest.mark.parametrize(
    ("env", "args"), pytest_commands(), ids=lambda value: " ".join(value) or "default"
)
def test_the_example_tests_pass_as_testing_md_runs_them(
    examples: Examples, env: dict[str, str], args: list[str]
) -> None:
    page = (DOCS / "testing.md").read_text()
    config = next(body for language, body in fenced_blocks(page) if language == "toml")
    (examples.directory / "pyproject.toml").write_text(config)
    environment = {**examples.env(), **env}
    if not env:
        environment.pop("AQUEUE_TEST_BROKER", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=examples.directory,
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tests = re.findall(r"^async def test_", (EXAMPLES / "test_signups.py").read_text(), re.M)
    assert f"{len(tests)} passed" in result.stdout, result.stdout
    # Only the RabbitMQ runs used the server, each test with queues of its own, which it
    # deleted: the application's queue names were never declared.
    on_rabbitmq = "rabbitmq" in " ".join([*args, *env.values()])
    assert ("aqueue: RabbitMQ at amqp://" in result.stdout) == on_rabbitmq, result.stdout
    assert not await_(exists(examples.q("signups")))


# -- coming-from.md --------------------------------------------------------------------------


def test_the_dramatiq_shared_broker_is_a_compat_broker(examples: Examples) -> None:
    from aqueue.brokers.rabbitmq.dramatiq_compat import DramatiqCompat

    shared = examples.load("dramatiq_shared")
    assert isinstance(shared.broker.middleware[0], DramatiqCompat)
    assert shared.broker._declarations.dramatiq_compat


# -- schedules.md -----------------------------------------------------------------------------


def test_the_periodic_example_declares_its_schedules(examples: Examples) -> None:
    periodic = examples.load("periodic")
    schedules = periodic.sales_report.broker.schedules
    assert sorted(schedules) == ["apac-sync", "sales_report"]
    assert schedules["sales_report"].describe() == "cron 30 2 * * * (Europe/Paris)"
    assert schedules["apac-sync"].describe() == "every 900 s"


def test_the_periodic_example_test_passes_as_schedules_md_runs_it(examples: Examples) -> None:
    page = (DOCS / "schedules.md").read_text()
    assert "$ pytest test_periodic.py" in page
    config = next(
        body
        for language, body in fenced_blocks((DOCS / "testing.md").read_text())
        if language == "toml"
    )
    (examples.directory / "pyproject.toml").write_text(config)
    environment = examples.env()
    environment.pop("AQUEUE_TEST_BROKER", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_periodic.py"],
        cwd=examples.directory,
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout, result.stdout


# -- guarantees.md ----------------------------------------------------------------------------


async def test_an_idempotent_actor_runs_a_duplicate_once(
    examples: Examples, capsys: pytest.CaptureFixture[str]
) -> None:
    idempotent = examples.load("idempotent")
    await idempotent.main()
    printed = capsys.readouterr().out.splitlines()
    assert printed == shown_output("guarantees.md", "a copy of a message")
    assert await count(examples.q("credits")) == 0
    assert await count(examples.q("credits") + ".XQ") == 0


# -- deployment.md and coming-from.md ---------------------------------------------------------


def table_rows(page: str) -> list[list[str]]:
    """The cells of every table row of ``page``."""
    text = (DOCS / page).read_text()
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| ") and not line.startswith("|--")
    ]


def test_deployment_settings_have_the_cli_defaults() -> None:
    params = {
        opt: param
        for param in aqueue.cli.worker.params
        if isinstance(param, click.Option)
        for opt in param.opts
    }
    rows = [r for r in table_rows("deployment.md") if r[0].startswith("`--")]
    assert len(rows) == 3
    for row in rows:
        option = re.match(r"`(--[a-z-]+)`", row[0])
        assert option is not None, row
        assert row[1] == f"`{params[option.group(1)].default}`", row


def test_deployment_numbers_are_the_code_defaults() -> None:
    from aqueue.middleware import TimeLimit

    page = (DOCS / "deployment.md").read_text()
    assert f"`time_limit` of {TimeLimit().time_limit:.0f} s" in page
    worker = aqueue.Worker(aqueue.InMemoryBroker())
    assert f"`--shutdown-timeout` seconds ({worker.shutdown_timeout:.0f} by default)" in page
    broker = aqueue.RabbitmqBroker()
    assert "`reconnect_interval` (1 s)" in page and broker.reconnect_interval == 1.0
    assert "`connect_timeout` (10 s)" in page and broker.connect_timeout == 10.0
    assert f"`publish_timeout` ({broker.publish_timeout:.0f} s)" in page
    for url in re.findall(r"amqps?://[^'\s`]+", page):
        aqueue.RabbitmqBroker(url)  # a valid URL, e.g. with ?heartbeat=


def test_coming_from_shows_aqueues_defaults() -> None:
    from aqueue.middleware import Retries, TimeLimit

    rows = {row[0]: row[-1] for row in table_rows("coming-from.md")}
    retries, time_limit = Retries(), TimeLimit()
    assert retries.max_backoff == 3600
    assert rows["Retries"].startswith(
        f"`max_retries` ({retries.max_retries}), `min_backoff` ({retries.min_backoff:g} s), "
        "`max_backoff` (1 hour)"
    )
    assert rows["Time limit"].startswith(f"`time_limit` ({time_limit.time_limit:g} s)")
    worker = aqueue.Worker(aqueue.InMemoryBroker())
    assert rows["Stop timeout"] == f"`--shutdown-timeout` (s, {worker.shutdown_timeout:g} s)"
    assert rows["Default processes and threads"] == (
        f"1 process, {worker.threads} threads, {worker.concurrency} async messages per actor"
    )
    assert rows["Message format"] == "JSON with Dramatiq's field names"
    dramatiq = next(r for r in table_rows("coming-from.md") if r[0] == "Message format")[1]
    assert re.findall(r"`(\w+)`", dramatiq) == list(aqueue.Message.__struct_fields__)
