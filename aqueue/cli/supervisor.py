"""``aqueue worker --processes N``: a parent that runs N worker processes and holds no connection.

It restarts a child that dies (unless it failed at startup), forwards SIGTERM and SIGINT
to the children, and with ``--metrics-port`` serves the sum of their metrics.

A child tells it that it started (it consumes its queues) by writing a byte to a pipe
whose descriptor it finds in ``AQUEUE_READY_FD``. A child that exits with 1 or 2 before
that failed at startup (a module that cannot import, a broker it cannot reach): the whole
pool stops. A child that exits after that, whatever its code (``os._exit(1)`` in an actor,
say), is restarted, after a pause that doubles while it keeps crashing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from ._common import EXIT_RUNTIME_ERROR, EXIT_USAGE_ERROR, log
from .metrics import children_metrics, mark_process_dead

__all__ = ["READY_FD_ENV", "SUPERVISED_ENV", "supervise"]

#: Set in a supervised worker process: its index among the supervisor's children.
SUPERVISED_ENV = "AQUEUE_WORKER_INDEX"
#: Set in a supervised worker process: the pipe to write one byte to once it consumes.
READY_FD_ENV = "AQUEUE_READY_FD"

#: Pause before restarting a child: doubles (up to the maximum) while its slot keeps
#: crashing, back to the first once a child stayed up ``_STABLE`` seconds.
_FIRST_BACKOFF = 0.5
_MAX_BACKOFF = 10.0
_STABLE = 30.0


def supervise(
    processes: int, shutdown_timeout: float, metrics: tuple[str, int] | None = None
) -> int:
    """Run ``processes`` worker children and restart those that die; hold no connection.

    With ``metrics``, the children write their metrics to a fresh directory
    (prometheus-client's multiprocess mode) and this process serves their sum.
    """
    with children_metrics(metrics) as metrics_dir:
        return _run_children(processes, metrics_dir)


@dataclass
class _Slot:
    """One of the N places for a worker process, and the process in it now."""

    index: int
    child: subprocess.Popen[bytes] | None = None
    ready_pipe: int | None = None  # read end; closed once the child is ready or gone
    ready: bool = False
    started_at: float = 0.0
    backoff: float = _FIRST_BACKOFF
    restart_at: float = 0.0

    def read_ready(self) -> None:
        """Note whether the child wrote its byte (it consumes now)."""
        if self.ready_pipe is None:
            return
        try:
            data = os.read(self.ready_pipe, 1)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self.ready = self.ready or bool(data)
        os.close(self.ready_pipe)  # ready (one byte is all), or EOF: the child is gone
        self.ready_pipe = None


def _run_children(processes: int, metrics_dir: str | None) -> int:
    argv = _child_argv()
    slots = [_Slot(index) for index in range(processes)]
    stopping = False
    finished: set[int] = set()

    def process_ended(child: subprocess.Popen[bytes]) -> None:
        # Its in-progress gauge no longer counts; its counters stay in the sum.
        if metrics_dir is not None and child.pid not in finished:
            finished.add(child.pid)
            mark_process_dead(child.pid, metrics_dir)

    def spawn(slot: _Slot) -> None:
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        env = {**os.environ, SUPERVISED_ENV: str(slot.index), READY_FD_ENV: str(write_end)}
        try:
            # A session of its own: a terminal's Ctrl-C reaches the parent only, which
            # forwards it.
            slot.child = subprocess.Popen(
                argv, env=env, start_new_session=True, pass_fds=(write_end,)
            )
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)  # the child's copy is the only one: EOF once it exits
        slot.ready_pipe = read_end
        slot.ready = False
        slot.started_at = time.monotonic()

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for slot in slots:
            if slot.child is not None and slot.child.poll() is None:
                slot.child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for slot in slots:
        spawn(slot)
    log.info("supervising %d worker processes", processes)
    exit_code = 0
    while True:
        alive = 0
        now = time.monotonic()
        for slot in slots:
            child = slot.child
            if child is None:
                if not stopping and now >= slot.restart_at:
                    spawn(slot)
                    alive += 1
                continue
            slot.read_ready()
            code = child.poll()
            if code is None:
                alive += 1
                continue
            slot.read_ready()  # a byte written just before it exited
            slot.child = None
            process_ended(child)
            if stopping:
                continue
            if not slot.ready and code in (EXIT_RUNTIME_ERROR, EXIT_USAGE_ERROR):
                log.error(
                    "worker process %d failed at startup (exit %d); stopping", slot.index, code
                )
                exit_code = code
                forward(signal.SIGTERM, None)
                continue
            up = now - slot.started_at
            if up >= _STABLE:
                slot.backoff = _FIRST_BACKOFF
            delay, slot.backoff = slot.backoff, min(slot.backoff * 2, _MAX_BACKOFF)
            slot.restart_at = now + delay
            log.warning(
                "worker process %d (pid %d) %s after %.1f s%s; restarting it in %.1f s",
                slot.index,
                child.pid,
                _describe_exit(code),
                up,
                "" if slot.ready else ", before it started consuming",
                delay,
            )
        if alive == 0 and (stopping or exit_code):
            return exit_code
        time.sleep(0.2)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with {code}"


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
