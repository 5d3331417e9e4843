"""The pytest plugin works in a fresh project that only installs aqueue."""

from __future__ import annotations

import asyncio
import functools
import json

import aio_pika
import pytest

from .conftest import RABBITMQ_URL, RabbitAdmin

TASKS = """
import os

import aqueue

QUEUE = os.environ.get("SAMPLE_QUEUE", "emails")
results = []


@aqueue.actor(queue_name=QUEUE, max_retries=2, min_backoff=3600)
async def send_email(to: str) -> None:
    if to == "flaky@example.com" and not any(r == ("retry", to) for r in results):
        results.append(("retry", to))
        raise ConnectionError("smtp down")
    results.append(("sent", to))


@aqueue.actor(queue_name=QUEUE, max_retries=0)
def broken(n: int) -> None:
    raise ValueError(f"bad {n}")
"""

TESTS = """
import pytest

import aqueue
import tasks


async def test_send_and_drain(aqueue_broker, aqueue_worker, aqueue_drain):
    await tasks.send_email.send("a@example.com")
    await aqueue_drain()
    assert ("sent", "a@example.com") in tasks.results


async def test_retry_backoff_is_skipped_in_memory(aqueue_broker, aqueue_worker, aqueue_drain):
    if not isinstance(aqueue_broker, aqueue.InMemoryBroker):
        pytest.skip("RabbitMQ holds the retry for its backoff")
    await tasks.send_email.send("flaky@example.com")
    await aqueue_drain()
    assert ("sent", "flaky@example.com") in tasks.results  # retried without waiting an hour


async def test_a_delayed_message_is_waited_for(aqueue_broker, aqueue_worker, aqueue_drain):
    await tasks.send_email.send_with_options(args=("later@example.com",), delay=2)
    await aqueue_drain()  # in memory the delay is skipped; on RabbitMQ it is waited for
    assert ("sent", "later@example.com") in tasks.results


async def test_failures_surface_in_the_test(aqueue_broker, aqueue_worker, aqueue_drain):
    await tasks.broken.send(3)
    with pytest.raises(ValueError, match="bad 3"):
        await aqueue_drain()


async def test_validation_still_applies(aqueue_broker):
    with pytest.raises(aqueue.ValidationError):
        await tasks.send_email.send(42)
"""


@pytest.mark.parametrize("kind", ["memory", "rabbitmq"])
def test_plugin_fixtures_in_a_fresh_project(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, queue_name: str, kind: str
) -> None:
    pytester.makepyfile(tasks=TASKS, test_tasks=TESTS)
    pytester.makeini("[pytest]\nasyncio_mode = auto\n")
    monkeypatch.setenv("SAMPLE_QUEUE", queue_name)
    monkeypatch.setenv("AQUEUE_BROKER_URL", RABBITMQ_URL)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--aqueue-broker={kind}")
    if kind == "rabbitmq":
        result.assert_outcomes(passed=4, skipped=1)
    else:
        result.assert_outcomes(passed=5)


LEFT_BEHIND_TASKS = """
import os

import aqueue

QUEUE = os.environ["SAMPLE_QUEUE"]
calls = []


@aqueue.actor(queue_name=QUEUE, max_retries=1, min_backoff=3, max_backoff=3)
async def flaky(tag: str) -> None:
    calls.append(("flaky", tag))
    raise ConnectionError("down")  # retried once, 3 s later


@aqueue.actor(queue_name=QUEUE, max_retries=0)
async def broken(tag: str) -> None:
    calls.append(("broken", tag))
    raise ValueError("dead-lettered at once")
"""

LEFT_BEHIND_TESTS = """
import asyncio
import json
import os

import tasks

RUN = os.environ["SAMPLE_RUN"]


async def wait_for_calls(count):
    for _ in range(100):
        if len(tasks.calls) >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(tasks.calls)


async def test_leaves_a_retry_and_a_dead_letter_behind(aqueue_broker, aqueue_worker):
    tasks.calls.clear()
    assert await aqueue_broker.dead_letters(tasks.broken.queue_name) == []
    await tasks.flaky.send(RUN + "-first")
    await tasks.broken.send(RUN + "-first")
    await wait_for_calls(2)  # the retry is due 3 s from now, the dead letter is there
    assert len(await aqueue_broker.dead_letters(tasks.broken.queue_name)) == 1
    with open(f"queues-{RUN}.json", "w") as file:
        json.dump([tasks.flaky.queue_name, tasks.broken.queue_name], file)


async def test_sees_nothing_an_earlier_test_or_run_left(aqueue_broker, aqueue_worker):
    tasks.calls.clear()
    await asyncio.sleep(4)  # the retries of the earlier test and run fall due meanwhile
    assert tasks.calls == []
    assert await aqueue_broker.dead_letters(tasks.broken.queue_name) == []
"""


async def test_rabbitmq_runs_and_tests_do_not_see_what_earlier_ones_left(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    queue_name: str,
    rabbit: RabbitAdmin,
) -> None:
    pytester.makepyfile(tasks=LEFT_BEHIND_TASKS, test_tasks=LEFT_BEHIND_TESTS)
    pytester.makeini("[pytest]\nasyncio_mode = auto\n")
    monkeypatch.setenv("SAMPLE_QUEUE", queue_name)
    monkeypatch.setenv("AQUEUE_BROKER_URL", RABBITMQ_URL)
    monkeypatch.setenv("AQUEUE_TEST_BROKER", "rabbitmq")
    # Run 1 leaves a retry due 3 s later and a dead letter; run 2 starts at once, and its
    # second test also waits through the retry its own first test left.
    monkeypatch.setenv("SAMPLE_RUN", "run1")
    run = functools.partial(
        asyncio.to_thread, pytester.runpytest_subprocess, "-p", "no:cacheprovider"
    )
    first = await run("-k", "leaves")
    first.assert_outcomes(passed=1, deselected=1)
    monkeypatch.setenv("SAMPLE_RUN", "run2")
    second = await run()
    second.assert_outcomes(passed=2)
    second.stdout.fnmatch_lines(["aqueue: RabbitMQ at amqp://*, each test on queues of its own*"])

    # Each test had queues of its own, named after the application's, and deleted them.
    used = [
        json.loads((pytester.path / f"queues-{run}.json").read_text()) for run in ("run1", "run2")
    ]
    names = {name for run in used for name in run}
    assert len(names) == 2 and all(n.startswith(queue_name + ".pytest-") for n in names), names

    left = [q for n in [queue_name, *names] for q in (n, n + ".XQ") if await exists(rabbit, q)]
    assert left == []


async def exists(rabbit: RabbitAdmin, queue_name: str) -> bool:
    try:
        await rabbit.count(queue_name)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return False
    return True


def test_plugin_leaves_other_suites_alone(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_plain="""
import aqueue.broker

def test_default_broker_untouched():
    assert aqueue._default_broker.broker is None

def test_no_event_loop_needed():
    assert 1 + 1 == 2
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
