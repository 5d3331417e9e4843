"""The README's demo runs: a worker and a producer, all tasks done, exit 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .conftest import RABBITMQ_URL

DEMO = Path(__file__).parent.parent / "examples" / "demo" / "run.py"


def test_demo_runs_every_task_and_exits_zero(queue_name: str) -> None:
    out = subprocess.run(
        [sys.executable, str(DEMO)],
        env={**os.environ, "AQUEUE_DEMO_QUEUE": queue_name, "AQUEUE_BROKER_URL": RABBITMQ_URL},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("[async] fetched") == 3
    assert out.stdout.count("thumbnail 10") == 4
    assert "refused before publishing" in out.stdout
    assert "all 7 tasks done" in out.stdout
