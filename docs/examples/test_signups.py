"""Tests of signups.py with the fixtures of aqueue's pytest plugin."""

import aqueue
import pytest

import signups


async def test_a_sign_up_sends_a_welcome_email(aqueue_worker, aqueue_drain):
    await signups.sign_up.send(42, "ada@example.com")
    await aqueue_drain()  # every queue: signups, then the emails it sent
    assert "ada@example.com" in signups.welcomed


async def test_the_actors_exception_is_raised_in_the_test(aqueue_worker, aqueue_drain):
    await signups.sign_up.send(43, "not an address")
    with pytest.raises(signups.InvalidAddress, match="cannot deliver"):
        await aqueue_drain()


@pytest.mark.usefixtures("aqueue_broker")  # sends go to the test's broker
async def test_bad_arguments_are_refused_when_sending():
    with pytest.raises(aqueue.ValidationError, match="user_id"):  # nothing is sent
        await signups.sign_up.send("forty-two", "ada@example.com")


async def test_an_actor_is_still_a_function():
    await signups.send_welcome_email("grace@example.com")  # runs here, no broker
    assert "grace@example.com" in signups.welcomed
