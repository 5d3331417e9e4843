"""Queue counts now and over the last half hour: samples taken every few seconds, in memory.

Ready messages and consumers of each queue and its dead-letter queue come from passive
declares over AMQP (as ``aqueue queues``); unacknowledged counts from the management API
when it answers. The samples are what the overview's charts draw; they are lost with
the dashboard process, which is fine for a 30-minute picture.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._admin import QueueRow, management_api, queue_rows
from ..broker import Broker
from ..brokers.rabbitmq.management import ManagementApi

__all__ = ["Sample", "Sampler"]

log = logging.getLogger("aqueue.dashboard")

#: Seconds after which a management API that failed is asked again.
MANAGEMENT_RETRY = 60.0


@dataclass(frozen=True)
class Sample:
    """One queue's counts at one moment (None: not known then)."""

    at: float
    ready: int | None
    unacknowledged: int | None
    consumers: int | None
    dead_letters: int | None


class Sampler:
    """Takes samples of ``queues`` every ``interval`` seconds and keeps ``keep`` of each.

    Args:
        broker: Where the queues are.
        queues: Their names.
        interval: Seconds between samples.
        keep: Samples kept per queue (360 at 5 s: half an hour).
        management_url: Where the management API is (default: as ``aqueue queues``).
    """

    def __init__(
        self,
        broker: Broker,
        queues: Sequence[str],
        *,
        interval: float = 5.0,
        keep: int = 360,
        management_url: str | None = None,
    ) -> None:
        self.broker = broker
        self.queues = list(queues)
        self.interval = interval
        self.samples: dict[str, deque[Sample]] = {q: deque(maxlen=keep) for q in self.queues}
        self.rows: dict[str, QueueRow] = {}
        self.taken_at = 0.0
        self.error: str | None = None
        self._management_url = management_url
        self._management: ManagementApi | str | None = None
        self._management_made = 0.0
        self._lock = asyncio.Lock()

    def _api(self) -> ManagementApi | str:
        now = time.monotonic()
        stale = isinstance(self._management, ManagementApi) and self._management_failed()
        if self._management is None or (stale and now - self._management_made > MANAGEMENT_RETRY):
            self._management = management_api(self.broker, self._management_url)
            self._management_made = now
        return self._management

    def _management_failed(self) -> bool:
        return any(
            (row.unacknowledged_unavailable or "").startswith("management API unavailable")
            for row in self.rows.values()
        )

    async def refresh(self, max_age: float = 1.0) -> dict[str, QueueRow]:
        """The latest counts, sampled now unless a sample is at most ``max_age`` seconds old."""
        async with self._lock:
            if time.monotonic() - self.taken_at > max_age:
                await self._take()
        return self.rows

    async def _take(self) -> None:
        rows = await queue_rows(self.broker, self.queues, management=self._api())
        now = time.time()
        self.taken_at = time.monotonic()
        self.error = None
        for row in rows:
            self.rows[row.queue] = row
            self.samples[row.queue].append(
                Sample(now, row.ready, row.unacknowledged, row.consumers, row.dead_letters)
            )

    async def run(self, stop: asyncio.Event) -> None:
        """Sample until ``stop`` is set; a failure is logged and shown, and retried with backoff.

        Stopping waits for a sample under way: a connection cancelled half-open would
        be closed only after its event loop.
        """
        delay = self.interval
        while not stop.is_set():
            try:
                await self.refresh(max_age=self.interval / 2)
                delay = self.interval
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                log.warning("dashboard: sampling the queues failed: %s", self.error)
                delay = min(delay * 2, 60.0)
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    def unacked_note(self) -> str | None:
        """Why unacknowledged counts are missing, if they are."""
        reasons = [r.unacknowledged_unavailable for r in self.rows.values()]
        found = [r for r in dict.fromkeys(reasons) if r]
        return "; ".join(found) if found else None

    def series(self, queue: str, field: str) -> list[tuple[float, int | None]]:
        """(time, value) of ``field`` in the samples of ``queue``."""
        return [(s.at, getattr(s, field)) for s in self.samples.get(queue, ())]

    def rate(self, queue: str, field: str = "ready") -> float | None:
        """Change of ``field`` per second over the samples kept (negative: draining)."""
        points = [(t, v) for t, v in self.series(queue, field) if v is not None]
        if len(points) < 2 or points[-1][0] == points[0][0]:
            return None
        return (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])


def row_json(row: QueueRow, sampler: Sampler) -> dict[str, Any]:
    """A queue as ``GET /api/queues`` returns it."""
    return {
        "name": row.queue,
        "exists": row.ready is not None,
        "ready": row.ready,
        "unacknowledged": row.unacknowledged,
        "consumers": row.consumers,
        "dead_letters": row.dead_letters,
        "dead_letter_queue": row.dead_letter_queue,
        "ready_change_per_second": sampler.rate(row.queue),
        "samples": [
            {"at": s.at, "ready": s.ready, "dead_letters": s.dead_letters}
            for s in sampler.samples.get(row.queue, ())
        ],
    }


def sparkline(values: Sequence[float | int | None], *, width: int = 120, height: int = 24) -> str:
    """An SVG polyline of ``values`` (numbers only, so the markup is safe as it is)."""
    points = [(i, float(v)) for i, v in enumerate(values) if v is not None]
    if len(points) < 2:
        return f'<svg class="spark" width="{width}" height="{height}" aria-hidden="true"></svg>'
    top = max(v for _, v in points) or 1.0
    last = max(i for i, _ in points) or 1
    coordinates = " ".join(
        f"{i * (width - 2) / last + 1:.1f},{height - 1 - v * (height - 2) / top:.1f}"
        for i, v in points
    )
    return (
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img"><polyline fill="none" stroke="currentColor" stroke-width="1.5" '
        f'points="{coordinates}"/></svg>'
    )
