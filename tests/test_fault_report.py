"""The fault report's churn scenario, short: it runs, and no confirmed message is lost."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import RABBITMQ_URL

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "fault_report.py"


def figure(output: str, name: str) -> int:
    match = re.search(rf"^{name}\s+(\d+)\b", output, re.MULTILINE)
    assert match is not None, f"no {name!r} figure in:\n{output}"
    return int(match.group(1))


@pytest.mark.slow
def test_churn_through_the_proxy_loses_no_confirmed_message() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--scenario",
            "churn",
            "--quick",
            "--churn-for",
            "6",
            "--tail",
            "3",
            "--drain-timeout",
            "30",
        ],
        env={**os.environ, "AQUEUE_BROKER_URL": RABBITMQ_URL},
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "3 resets" in output  # the connections really were reset
    confirmed = figure(output, "confirmed")
    assert confirmed > 500
    assert figure(output, "lost") == 0
    # Every confirmed message ran (none of these can be dead-lettered: the actor never fails).
    assert figure(output, "processed") >= confirmed
    assert figure(output, "dead-lettered") == 0
