"""The FastAPI example against the real RabbitMQ and a real worker process."""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import sys
import time
from pathlib import Path

import pytest

from .conftest import RABBITMQ_URL

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

ROOT = Path(__file__).parent.parent


@pytest.fixture
def example_env(queue_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    log = tmp_path / "processed.txt"
    monkeypatch.setenv("FASTAPI_EXAMPLE_QUEUE", queue_name)
    monkeypatch.setenv("FASTAPI_EXAMPLE_LOG", str(log))
    monkeypatch.setenv("AQUEUE_BROKER_URL", RABBITMQ_URL)
    for name in [m for m in sys.modules if m.startswith("examples.fastapi_app")]:
        del sys.modules[name]
    return log


async def test_200_concurrent_requests_are_each_processed_exactly_once(
    example_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from examples.fastapi_app.app import app, broker

    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aqueue",
        "worker",
        "examples.fastapi_app.tasks",
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    latencies: list[float] = []
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                # Warm up: the first send declares the queue.
                await client.post("/signups", json={"user_id": 0, "email": "warm@example.com"})

                async def sign_up(user_id: int) -> str:
                    started = time.perf_counter()
                    response = await client.post(
                        "/signups", json={"user_id": user_id, "email": f"u{user_id}@example.com"}
                    )
                    latencies.append(time.perf_counter() - started)
                    assert response.status_code == 202, response.text
                    return str(response.json()["message_id"])

                ids = await asyncio.gather(*(sign_up(i) for i in range(1, 201)))
                burst, latencies = latencies, []
                for i in range(201, 251):  # one at a time: the latency of a single request
                    ids.append(await sign_up(i))
                bad = await client.post("/signups", json={"user_id": "x", "email": 1})
                assert bad.status_code == 422
            deadline = time.monotonic() + 60
            while _lines(example_env) < 251 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await broker.join(os.environ["FASTAPI_EXAMPLE_QUEUE"], timeout=30)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(worker.wait(), 30) == 0

    processed = example_env.read_text().split()  # noqa: ASYNC240 - the worker has stopped
    processed_ids = processed[0::2]
    assert len(processed_ids) == 251
    assert set(ids) <= set(processed_ids)
    assert len(set(processed_ids)) == len(processed_ids)  # each exactly once
    burst_p50, burst_p99 = _percentiles(burst)
    single_p50, single_p99 = _percentiles(latencies)
    with capsys.disabled():
        print(
            f"\nFastAPI: 200 concurrent requests: latency p50 {burst_p50:.1f} ms, "
            f"p99 {burst_p99:.1f} ms; one at a time: p50 {single_p50:.2f} ms, "
            f"p99 {single_p99:.2f} ms"
        )
    # 200 requests at once share one event loop, but their confirms are pipelined.
    assert burst_p99 < 2000
    assert single_p50 < 50


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[max(0, int(len(ordered) * 0.99) - 1)]
    return statistics.median(ordered) * 1000, p99 * 1000


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0
