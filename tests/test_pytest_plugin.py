"""The pytest plugin works in a fresh project that only installs aqueue."""

from __future__ import annotations

import pytest

from .conftest import RABBITMQ_URL

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
