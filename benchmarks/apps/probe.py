"""What every benchmarked consumer calls from its no-op actor (aqueue, aio-pika, Dramatiq, taskiq).

The consuming process measures itself, so that the figures exclude its start-up and
are read the same way for every peer: the first call records the wall clock and this
process's CPU time (all threads), the ``BENCH_N``-th finished call records them again
and writes a JSON report to ``BENCH_OUT`` (atomically, by rename). The harness
(``benchmarks/run.py``) waits for that file.

Configured by environment variables:

* ``BENCH_N``: calls to wait for.
* ``BENCH_OUT``: path of the JSON report.
* ``BENCH_LATENCY=1``: also record ``(argument, time.time())`` of every call, for
  send-to-start latency (the sender records ``time.time()`` before it sends).
* ``BENCH_SLEEP``: seconds a blocking (``def``) actor sleeps (0: none).

The per-call cost is one ``next()`` on a counter (atomic under the GIL, so thread-safe
without a lock) and one comparison; the same for every peer.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from typing import Any


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Probe:
    def __init__(self) -> None:
        self.n = int(os.environ.get("BENCH_N", "0"))
        self.out = os.environ.get("BENCH_OUT", "")
        self.latency = os.environ.get("BENCH_LATENCY") == "1"
        self.sleep = float(os.environ.get("BENCH_SLEEP") or 0)
        self._starts = itertools.count(1)
        self._ends = itertools.count(1)
        self.first: tuple[float, float] | None = None
        self.arrivals: list[tuple[int, float]] = []

    def call(self, i: int) -> None:
        """The body of a no-op actor (sleeps ``BENCH_SLEEP`` in blocking actors)."""
        started = next(self._starts)
        if started == 1:
            self.first = (time.time(), time.process_time())
        if self.latency:
            self.arrivals.append((i, time.time()))
        if self.sleep:
            time.sleep(self.sleep)
            finished = next(self._ends)
        else:
            finished = started
        if finished == self.n:
            self.dump()

    def dump(self) -> None:
        wall, cpu = time.time(), time.process_time()
        assert self.first is not None
        try:
            loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
        except RuntimeError:
            loop = "thread"
        report: dict[str, Any] = {
            "pid": os.getpid(),
            "count": self.n,
            "first_wall": self.first[0],
            "last_wall": wall,
            "first_cpu": self.first[1],
            "last_cpu": cpu,
            "rss_bytes": _rss_bytes(),
            "loop": loop,
            "arrivals": self.arrivals,
        }
        if self.out:
            tmp = f"{self.out}.tmp"
            with open(tmp, "w") as f:
                json.dump(report, f)
            os.replace(tmp, self.out)


PROBE = Probe()
