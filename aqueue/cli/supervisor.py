"""``aqueue worker --processes N``: a parent that runs N worker processes and holds no connection.

It restarts a child that dies (unless it failed at startup), forwards SIGTERM and SIGINT
to the children, and with ``--metrics-port`` serves the sum of their metrics.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from ._common import EXIT_RUNTIME_ERROR, EXIT_USAGE_ERROR, log
from .metrics import children_metrics, mark_process_dead

__all__ = ["SUPERVISED_ENV", "supervise"]

#: Set in a supervised worker process: its index among the supervisor's children.
SUPERVISED_ENV = "AQUEUE_WORKER_INDEX"


def supervise(
    processes: int, shutdown_timeout: float, metrics: tuple[str, int] | None = None
) -> int:
    """Run ``processes`` worker children and restart those that die; hold no connection.

    With ``metrics``, the children write their metrics to a fresh directory
    (prometheus-client's multiprocess mode) and this process serves their sum.
    """
    with children_metrics(metrics) as metrics_dir:
        return _run_children(processes, metrics_dir)


def _run_children(processes: int, metrics_dir: str | None) -> int:
    argv = _child_argv()
    children: dict[int, subprocess.Popen[bytes]] = {}
    stopping = False
    started_at: dict[int, float] = {}
    finished: set[int] = set()

    def process_ended(child: subprocess.Popen[bytes]) -> None:
        # Its in-progress gauge no longer counts; its counters stay in the sum.
        if metrics_dir is not None and child.pid not in finished:
            finished.add(child.pid)
            mark_process_dead(child.pid, metrics_dir)

    def spawn(index: int) -> None:
        env = {**os.environ, SUPERVISED_ENV: str(index)}
        # A session of its own: a terminal's Ctrl-C reaches the parent only, which forwards it.
        children[index] = subprocess.Popen(argv, env=env, start_new_session=True)
        started_at[index] = time.monotonic()

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for index in range(processes):
        spawn(index)
    log.info("supervising %d worker processes", processes)
    exit_code = 0
    while True:
        alive = 0
        for index, child in list(children.items()):
            code = child.poll()
            if code is None:
                alive += 1
                continue
            process_ended(child)
            if stopping:
                continue
            if (
                code in (EXIT_RUNTIME_ERROR, EXIT_USAGE_ERROR)
                and time.monotonic() - started_at[index] < 30
            ):
                log.error("worker process %d failed at startup (exit %d); stopping", index, code)
                exit_code = code
                forward(signal.SIGTERM, None)
                continue
            log.warning(
                "worker process %d (pid %d) exited with %s; restarting it", index, child.pid, code
            )
            spawn(index)
            alive += 1
        if alive == 0 and (stopping or exit_code):
            return exit_code
        time.sleep(0.2)


def _child_argv() -> list[str]:
    """This command line, as one worker process (without --processes)."""
    args = sys.argv[1:]
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in ("-p", "--processes"):
            skip = True
            continue
        if arg.startswith("--processes=") or (arg.startswith("-p") and arg[2:].isdigit()):
            continue
        out.append(arg)
    return [sys.executable, "-m", "aqueue", *out]
