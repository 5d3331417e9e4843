"""``aqueue.group``: members in parallel, then ``on_complete`` once with their results."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiormq
import msgspec
import pytest

import aqueue
from aqueue import Worker
from aqueue._groups import (
    GroupClaim,
    GroupMember,
    GroupOutcome,
    failure_record,
    result_record,
)
from aqueue.brokers.rabbitmq.dramatiq_compat import from_wire, to_wire
from aqueue.brokers.rabbitmq.groups import claim_queue, records_queue

from .conftest import RABBITMQ_URL, RabbitAdmin

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def group_queues(rabbit: RabbitAdmin) -> AsyncIterator[list[str]]:
    """Group ids of this test: their RabbitMQ queues are deleted afterwards."""
    ids: list[str] = []
    yield ids
    for group_id in ids:
        await rabbit.delete(records_queue(group_id), claim_queue(group_id))


async def queue_exists(rabbit: RabbitAdmin, name: str) -> bool:
    try:
        await rabbit.count(name)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return False
    return True


def start(command: list[str], **options: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, **options)


async def eventually(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_on_complete_runs_once_with_the_results_in_member_order(
    broker: aqueue.Broker, queue_name: str, rabbit: RabbitAdmin, group_queues: list[str]
) -> None:
    completed: list[tuple[str, list[int]]] = []

    @broker.actor(queue_name=queue_name)
    async def square(n: int) -> int:
        await asyncio.sleep(random.uniform(0, 0.05))  # finish out of order
        return n * n

    @broker.actor(queue_name=queue_name)
    def collect(label: str, results: list[int]) -> None:  # blocking, like any actor
        completed.append((label, results))

    members = aqueue.group(
        [square.message(n) for n in range(20)],
        on_complete=collect.message("squares"),
        expires=1,
        broker=broker,
    )
    async with Worker(broker, queues=[queue_name], concurrency=20):
        await members.send()
        group_queues.append(members.group_id)
        await eventually(lambda: bool(completed))
        await broker.join(queue_name, timeout=10)
    assert completed == [("squares", [n * n for n in range(20)])]
    if isinstance(broker, aqueue.RabbitmqBroker):
        # The claim is released; the records queue keeps only the done record, and
        # RabbitMQ deletes it once unused for the group's ``expires``.
        assert not await queue_exists(rabbit, claim_queue(members.group_id))
        assert await rabbit.count(records_queue(members.group_id)) == 1
        # Checking declares it, which restarts its clock: look only once it should be gone.
        deadline = time.monotonic() + 15
        while True:
            await asyncio.sleep(1.5)  # one expiry (1 s) and RabbitMQ's timer, untouched
            if not await queue_exists(rabbit, records_queue(members.group_id)):
                break
            assert time.monotonic() < deadline, "the group's queue did not expire"


async def test_a_member_that_fails_for_good_runs_on_failure_once_and_never_on_complete(
    broker: aqueue.Broker, queue_name: str, group_queues: list[str]
) -> None:
    ran: list[str] = []

    @broker.actor(queue_name=queue_name, max_retries=1, min_backoff=0.01, max_backoff=0.01)
    async def check(n: int) -> int:
        if n == 3:
            raise ValueError("bad input 3")
        return n

    @broker.actor(queue_name=queue_name)
    async def complete(results: list[int]) -> None:
        ran.append("complete")

    @broker.actor(queue_name=queue_name)
    async def alarm(label: str) -> None:
        ran.append(f"alarm {label}")

    members = aqueue.group(
        [check.message(n) for n in range(6)],
        on_complete=complete.message(),
        on_failure=alarm.message("checks"),
        broker=broker,
    )
    async with Worker(broker, queues=[queue_name]):
        await members.send()
        group_queues.append(members.group_id)
        await eventually(lambda: bool(ran))
        await broker.join(queue_name, timeout=10)
    assert ran == ["alarm checks"]
    (letter,) = await broker.dead_letters(queue_name)
    assert letter.message.args == (3,)


async def test_a_member_the_worker_cannot_run_fails_the_group_at_once(
    broker: aqueue.Broker, queue_name: str, group_queues: list[str]
) -> None:
    """A member dead-lettered unrun (its actor unknown to the worker) records its failure:
    on_failure runs, rather than the group waiting until it expires."""
    ran: list[str] = []

    @broker.actor(queue_name=queue_name)
    async def check(n: int) -> int:
        return n

    @broker.actor(queue_name=queue_name)
    async def only_on_the_sender(n: int) -> int:
        return n

    @broker.actor(queue_name=queue_name)
    async def complete(results: list[int]) -> None:
        ran.append("complete")

    @broker.actor(queue_name=queue_name)
    async def alarm(label: str) -> None:
        ran.append(f"alarm {label}")

    members = aqueue.group(
        [check.message(1), only_on_the_sender.message(2), check.message(3)],
        on_complete=complete.message(),
        on_failure=alarm.message("checks"),
        broker=broker,
    )
    del broker.actors[only_on_the_sender.actor_name]  # as in a worker without it
    async with Worker(broker, queues=[queue_name]):
        await members.send()
        group_queues.append(members.group_id)
        await eventually(lambda: bool(ran), timeout=10)
        await broker.join(queue_name, timeout=10)
    assert ran == ["alarm checks"]
    (letter,) = await broker.dead_letters(queue_name)
    assert letter.reason == "unknown-actor" and letter.message.args == (2,)


def test_members_and_callbacks_are_validated_when_the_group_is_built(
    broker: aqueue.Broker, queue_name: str
) -> None:
    @broker.actor(queue_name=queue_name)
    async def square(n: int) -> int:
        return n * n

    @broker.actor(queue_name=queue_name)
    async def total(label: str, results: list[int]) -> None: ...

    aqueue.group([square.message(1)], on_complete=total.message("x"), broker=broker)
    with pytest.raises(aqueue.ValidationError, match=r"group member 2 \(square\): .*missing"):
        aqueue.group([square.message(1), square.message()], broker=broker)
    with pytest.raises(aqueue.ValidationError, match=r"on_complete \(total\)"):
        aqueue.group([square.message(1)], on_complete=total.message("x", [1]), broker=broker)
    with pytest.raises(aqueue.ValidationError, match=r"on_failure \(total\): .*missing"):
        aqueue.group([square.message(1)], on_failure=total.message("x"), broker=broker)
    chain = aqueue.pipeline([square.message(1), square.message()], broker=broker)
    with pytest.raises(aqueue.ValidationError, match="groups of pipelines"):
        aqueue.group([chain.first_message()], broker=broker)
    with pytest.raises(aqueue.ValidationError, match="at least one message"):
        aqueue.group([], broker=broker)
    with pytest.raises(aqueue.ValidationError, match="expires"):
        aqueue.group([square.message(1)], on_complete=total.message("x"), expires=0, broker=broker)


# -- the decision itself, under duplicates and races ---------------------------------------


async def test_duplicate_records_from_racing_processes_decide_the_group_once(
    broker: aqueue.Broker, make_broker: Callable[..., aqueue.Broker], group_queues: list[str]
) -> None:
    # Two brokers on RabbitMQ (two connections, as two processes have) settle the members
    # of one group at once, every member twice, as redelivered members do.
    other = make_broker() if isinstance(broker, aqueue.RabbitmqBroker) else broker
    size = 12
    group_id = uuid.uuid4().hex
    group_queues.append(group_id)
    outcomes: list[GroupOutcome] = []

    async def publish(outcome: GroupOutcome) -> None:
        await asyncio.sleep(0.01)  # a callback takes a moment to publish
        outcomes.append(outcome)

    def member(index: int) -> GroupMember:
        return GroupMember(id=group_id, index=index, size=size, expires=60)

    settles = [
        b.settle_group_member(member(i), result_record(i, {"n": i}), publish)
        for i in range(size)
        for b in (broker, other)
    ]
    random.shuffle(settles)
    await asyncio.gather(*settles)
    assert len(outcomes) == 1
    (outcome,) = outcomes
    assert outcome.results is not None
    assert [msgspec.json.decode(r) for r in outcome.results] == [{"n": i} for i in range(size)]

    # Late duplicates and a late failure decide nothing any more.
    await broker.settle_group_member(member(0), result_record(0, {"n": 0}), publish)
    await other.settle_group_member(member(5), failure_record(5, "late"), publish)
    assert len(outcomes) == 1


async def test_a_failure_racing_the_completion_check_is_not_lost(
    broker: aqueue.Broker, make_broker: Callable[..., aqueue.Broker], group_queues: list[str]
) -> None:
    other = make_broker() if isinstance(broker, aqueue.RabbitmqBroker) else broker
    size = 8
    group_id = uuid.uuid4().hex
    group_queues.append(group_id)
    outcomes: list[GroupOutcome] = []

    async def publish(outcome: GroupOutcome) -> None:
        outcomes.append(outcome)

    def member(index: int) -> GroupMember:
        return GroupMember(id=group_id, index=index, size=size, expires=60)

    # Duplicates bring the count to the size early: claims that find the group undecided.
    indices = [0, 1, 2, 3, 4, 5, 7, 0, 1, 2, 3]
    settles = [
        (broker if k % 2 else other).settle_group_member(member(i), result_record(i, i), publish)
        for k, i in enumerate(indices)
    ]
    settles.append(other.settle_group_member(member(6), failure_record(6, "E: no"), publish))
    random.shuffle(settles)
    await asyncio.gather(*settles)
    assert len(outcomes) == 1
    assert outcomes[0].failure is not None and outcomes[0].failure.error == "E: no"


async def test_a_record_added_while_the_claim_is_held_is_read_after_its_release(
    broker: aqueue.Broker, make_broker: Callable[..., aqueue.Broker], group_queues: list[str]
) -> None:
    other = make_broker() if isinstance(broker, aqueue.RabbitmqBroker) else broker
    group_id = uuid.uuid4().hex
    group_queues.append(group_id)
    outcomes: list[GroupOutcome] = []

    async def publish(outcome: GroupOutcome) -> None:
        outcomes.append(outcome)

    def member(index: int) -> GroupMember:
        return GroupMember(id=group_id, index=index, size=2, expires=60)

    holding, resume = asyncio.Event(), asyncio.Event()
    claim_of = broker._group_claim

    @contextlib.asynccontextmanager
    async def slow_claim(m: GroupMember) -> AsyncIterator[GroupClaim | None]:
        async with claim_of(m) as claim:
            holding.set()
            await resume.wait()
            yield claim

    await broker.settle_group_member(member(0), result_record(0, "a"), publish)
    # A redelivered member 0 makes the count reach the size: a claim that reads [0, 0].
    broker._group_claim = slow_claim  # type: ignore[method-assign]
    first = asyncio.ensure_future(
        broker.settle_group_member(member(0), result_record(0, "a"), publish)
    )
    await asyncio.wait_for(holding.wait(), 10)
    # Member 1 finishes meanwhile: it cannot decide (the claim is held, the reads unacked).
    settling = asyncio.ensure_future(
        other.settle_group_member(member(1), result_record(1, "b"), publish)
    )
    if other is not broker:
        await asyncio.wait_for(settling, 10)
        assert outcomes == []
    resume.set()
    await asyncio.wait_for(asyncio.gather(first, settling), 10)
    assert len(outcomes) == 1 and outcomes[0].results is not None
    assert [msgspec.json.decode(r) for r in outcomes[0].results] == ["a", "b"]


HOLD_CLAIM = """
import asyncio
import sys

import aqueue
from aqueue._groups import GroupMember


async def main():
    broker = aqueue.RabbitmqBroker(sys.argv[1])
    member = GroupMember(id=sys.argv[2], index=0, size=1, expires=60)
    async with broker._group_claim(member) as claim:
        print("claimed", len(claim.bodies), flush=True)
        await asyncio.sleep(60)


asyncio.run(main())
"""


async def test_a_claim_held_by_a_process_that_dies_is_released(
    rabbitmq_broker: aqueue.RabbitmqBroker, tmp_path: Path, group_queues: list[str]
) -> None:
    group_id = uuid.uuid4().hex
    group_queues.append(group_id)
    member = GroupMember(id=group_id, index=0, size=1, expires=60)
    outcomes: list[GroupOutcome] = []

    async def publish(outcome: GroupOutcome) -> None:
        outcomes.append(outcome)

    await rabbitmq_broker._group_add(member, result_record(0, "r"))
    script = tmp_path / "hold_claim.py"
    script.write_text(HOLD_CLAIM)
    holder = start([sys.executable, str(script), RABBITMQ_URL, group_id], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(holder.stdout.readline), 20)
        assert line.split() == [b"claimed", b"1"]
        # Held: another process leaves the decision to the holder, and finds no record
        # to read meanwhile (the holder's reads are unacked).
        await rabbitmq_broker.settle_group_member(member, result_record(0, "r"), publish)
        assert outcomes == []
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()
    # RabbitMQ dropped the dead process's connection, its claim and its reads: the
    # holder's member, redelivered, settles again and decides.
    deadline = time.monotonic() + 15
    while not outcomes:
        assert time.monotonic() < deadline, "the claim was never released"
        await rabbitmq_broker.settle_group_member(member, result_record(0, "r"), publish)
        await asyncio.sleep(0.1)
    assert len(outcomes) == 1 and outcomes[0].results is not None
    assert [msgspec.json.decode(r) for r in outcomes[0].results] == ["r"]


# -- across worker processes, one of them killed ---------------------------------------------

GROUP_MODULE = """
import asyncio
import os
import random
import signal

import aqueue
from aqueue.middleware import Middleware

broker = aqueue.RabbitmqBroker()
QUEUE = os.environ["GROUP_QUEUE"]
OUT = os.environ["GROUP_OUT"]


def record(line):
    with open(OUT, "a") as out:
        out.write(f"{line} {os.getpid()}\\n")


class DieAfterRecording(Middleware):
    # After Groups: member 7's result is recorded (maybe the group decided), not acked yet.
    async def after_process_message(self, context):
        if context.message.actor_name != "square":
            return
        n = context.message.args[0]
        marker = OUT + ".killed"
        if n == 7 and not os.path.exists(marker):
            open(marker, "w").close()
            record("kill")
            os.kill(os.getpid(), signal.SIGKILL)
        record(f"settled {n}")


broker.add_middleware(DieAfterRecording())


@broker.actor(queue_name=QUEUE)
async def square(n: int) -> int:
    await asyncio.sleep(random.uniform(0.05, 0.2))
    record(f"square {n}")
    return n * n


@broker.actor(queue_name=QUEUE)
async def collect(results: list[int]) -> None:
    record(f"collect {results}")
"""


async def test_twenty_members_on_two_workers_one_killed_complete_once_in_order(
    rabbitmq_broker: aqueue.RabbitmqBroker,
    queue_name: str,
    tmp_path: Path,
    rabbit: RabbitAdmin,
    group_queues: list[str],
) -> None:
    (tmp_path / "grouped.py").write_text(GROUP_MODULE)
    out = tmp_path / "out.txt"
    env = {
        **os.environ,
        "AQUEUE_BROKER_URL": RABBITMQ_URL,
        "GROUP_QUEUE": queue_name,
        "GROUP_OUT": str(out),
        "PYTHONPATH": str(tmp_path),
    }

    @rabbitmq_broker.actor(queue_name=queue_name)
    async def square(n: int) -> int:
        raise NotImplementedError  # runs in the worker processes

    @rabbitmq_broker.actor(queue_name=queue_name)
    async def collect(results: list[int]) -> None:
        raise NotImplementedError

    def lines() -> list[str]:
        return (
            [line.rsplit(" ", 1)[0] for line in out.read_text().splitlines()]
            if out.exists()
            else []
        )

    command = [sys.executable, "-m", "aqueue", "worker", "grouped", "--log-level", "warning"]
    workers = [start(command, cwd=tmp_path, env=env, stderr=subprocess.DEVNULL) for _ in range(2)]
    try:
        await rabbitmq_broker.declare_queue(queue_name)
        deadline = time.monotonic() + 30
        while (info := await rabbitmq_broker.queue_info(queue_name)) is None or info.consumers < 2:
            assert time.monotonic() < deadline, "the workers did not start consuming"
            await asyncio.sleep(0.05)
        members = await aqueue.group(
            [square.message(n) for n in range(20)],
            on_complete=collect.message(),
            broker=rabbitmq_broker,
        ).send()
        group_queues.append(members.group_id)
        await eventually(lambda: "kill" in lines())
        # Member 7 comes back (redelivered to the survivor) and is recorded a second time.
        await eventually(lambda: lines().count("settled 7") == 1)
        await eventually(lambda: any(line.startswith("collect") for line in lines()))
        # Quiet: nothing ready and no line written for a second. The survivor also runs the
        # copies of members the killed worker had finished but not acked yet (acks go out in
        # batches); stopped before that, it would rightly give them back to the queue.
        deadline, seen, quiet_since = time.monotonic() + 30, len(lines()), time.monotonic()
        while time.monotonic() - quiet_since < 1.0 or await rabbit.count(queue_name):
            assert time.monotonic() < deadline, "the workers never went quiet"
            await asyncio.sleep(0.05)
            if len(lines()) != seen:
                seen, quiet_since = len(lines()), time.monotonic()
        # A graceful stop finishes what runs; nothing may be left over or sent again.
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(30)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)
    found = lines()
    assert [line for line in found if line.startswith("collect")] == [
        f"collect {[n * n for n in range(20)]}"
    ]
    assert found.count("square 7") == 2  # run twice, counted once
    assert sorted({int(line.split()[1]) for line in found if line.startswith("settled")}) == list(
        range(20)
    )
    pids = {line.split()[-1] for line in out.read_text().splitlines() if line.startswith("square")}
    assert len(pids) == 2, "both workers ran members"
    assert await rabbit.count(queue_name) == 0
    assert not await queue_exists(rabbit, claim_queue(members.group_id))


def test_a_compat_broker_writes_the_callbacks_durations_in_milliseconds() -> None:
    broker = aqueue.RabbitmqBroker(RABBITMQ_URL, dramatiq_compat=True)

    @broker.actor(queue_name="grouped")
    async def square(n: int) -> int:
        return n * n

    @broker.actor(queue_name="grouped")
    async def total(results: list[int]) -> None: ...

    members = aqueue.group(
        [square.message(2)],
        on_complete=total.message_with_options(time_limit=1.5),
        broker=broker,
    ).member_messages("g")
    options = members[0].options
    to_wire(options)
    assert options["group"]["on_complete"]["options"]["time_limit"] == 1500
    from_wire(options)
    assert options["group"]["on_complete"]["options"]["time_limit"] == 1.5
