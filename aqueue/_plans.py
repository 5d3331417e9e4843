"""A worker's plan: which queues it consumes, the prefetch of each, the per-actor limits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from .actor import Actor
from .broker import Broker
from .errors import WorkerError

__all__ = ["QueuePlan", "plan_queues"]


@dataclass
class QueuePlan:
    name: str
    actors: list[Actor[Any, Any]]
    prefetch: int
    # Per-actor limits, only where prefetch alone does not bound an actor.
    limiters: dict[str, anyio.CapacityLimiter] = field(default_factory=dict)


def plan_queues(
    broker: Broker,
    queues: Sequence[str] | None,
    *,
    concurrency: int,
    threads: int,
    prefetch_exact: bool = False,
) -> list[QueuePlan]:
    """Queues, prefetch counts and limits; WorkerError if there is nothing to run.

    Args:
        broker: The broker whose actors to run.
        queues: The queues asked for; None for every queue that has an actor.
        concurrency: Default concurrency of ``async def`` actors.
        threads: Threads for blocking actors (also their default concurrency).
        prefetch_exact: Fetch only what can run: a queue's prefetch is the sum of its
            actors' concurrency, without the headroom blocking actors get otherwise (for
            autoscaled fleets, where a message held by a busy worker is one an idle or
            new worker cannot take).
    """
    by_queue: dict[str, list[Actor[Any, Any]]] = {}
    for actor in broker.actors.values():
        by_queue.setdefault(actor.queue_name, []).append(actor)
    if not by_queue:
        raise WorkerError("the broker has no actors; import the modules that declare them")
    names = queues if queues is not None else sorted(by_queue)
    unknown = [q for q in names if q not in by_queue]
    if unknown:
        raise WorkerError(
            f"no actor uses queue{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
            f"(queues with actors: {', '.join(sorted(by_queue))})"
        )
    plans = []
    for name in names:
        actors = by_queue[name]
        plan = QueuePlan(name=name, actors=actors, prefetch=0)
        for actor in actors:
            limit = _concurrency_of(actor, concurrency=concurrency, threads=threads)
            plan.prefetch += (
                limit if prefetch_exact else _prefetch_of(actor, limit, threads=threads)
            )
            if len(actors) > 1:
                plan.limiters[actor.actor_name] = anyio.CapacityLimiter(limit)
        plans.append(plan)
    return plans


def _concurrency_of(actor: Actor[Any, Any], *, concurrency: int, threads: int) -> int:
    if actor.is_async:
        return actor.concurrency or concurrency
    return min(actor.concurrency or threads, threads)


def _prefetch_of(actor: Actor[Any, Any], limit: int, *, threads: int) -> int:
    if actor.is_async or actor.concurrency is not None:
        return limit
    # A blocking actor on the default concurrency takes a few messages more than it
    # has threads, so that a thread that finishes finds its next message here instead
    # of waiting a round trip to RabbitMQ; the thread pool still bounds what runs.
    return limit + max(1, threads // 4)
