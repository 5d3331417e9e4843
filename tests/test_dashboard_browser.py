"""The dashboard in a real headless Chromium, against the real RabbitMQ and a real worker.

Driven through ChromeDriver's W3C WebDriver HTTP API with httpx (no browser library to
install). Skipped when Debian's ``chromium`` and ``chromium-driver`` are not installed
(``apt-get install -y chromium chromium-driver``). Screenshots go to
``$AQUEUE_SCREENSHOTS`` (default: the test's temporary directory).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import aqueue
from aqueue.dashboard._app import Dashboard

from .test_dashboard import App, _Zero

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver "
    "(apt-get install -y chromium chromium-driver)",
)

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Browser:
    """A headless Chromium session, through ChromeDriver's W3C API."""

    def __init__(self, client: httpx.AsyncClient, session: str) -> None:
        self.client = client
        self.session = session

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        url = f"/session/{self.session}{path}"
        response = await self.client.request(method, url, json=body)
        value = response.json()["value"]
        if response.status_code != 200:
            raise AssertionError(f"webdriver {method} {path}: {value}")
        return value

    async def go(self, url: str) -> None:
        await self.call("POST", "/url", {"url": url})

    async def find(self, css: str) -> str:
        found = await self.call("POST", "/element", {"using": "css selector", "value": css})
        return str(found[ELEMENT])

    async def text(self, css: str = "body") -> str:
        return str(await self.call("GET", f"/element/{await self.find(css)}/text"))

    async def click(self, css: str) -> None:
        await self.call("POST", f"/element/{await self.find(css)}/click", {})

    async def screenshot(self, path: Path) -> None:
        png = base64.b64decode(await self.call("GET", "/screenshot"))
        await asyncio.to_thread(path.write_bytes, png)

    async def wait_for_text(self, needle: str, css: str = "body", timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = await self.text(css)
            if needle in text:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not on the page:\n{text}")
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    assert CHROMEDRIVER is not None and CHROMIUM is not None
    port = free_port()
    driver = await asyncio.create_subprocess_exec(
        CHROMEDRIVER, f"--port={port}", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            for _ in range(100):
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/status")).json()["value"]["ready"]:
                        break
                await asyncio.sleep(0.1)
            options = {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1400,900",
                ],
            }
            capabilities = {"alwaysMatch": {"goog:chromeOptions": options}}
            created = await client.post("/session", json={"capabilities": capabilities})
            session = created.json()["value"]["sessionId"]
            browser = Browser(client, session)
            try:
                yield browser
            finally:
                await client.delete(f"/session/{session}")
    finally:
        driver.terminate()
        await asyncio.wait_for(driver.wait(), 10)


@contextlib.asynccontextmanager
async def serving(dashboard: Dashboard) -> AsyncIterator[str]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(dashboard, host="127.0.0.1", port=port, log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), "the server did not start"
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def app(queue_name: str) -> AsyncIterator[App]:
    made = App(queue_name)
    try:
        yield made
    finally:
        await made.broker.close()


async def test_replay_through_the_page_in_chromium(app: App, tmp_path: Path) -> None:
    shots = Path(os.environ.get("AQUEUE_SCREENSHOTS", tmp_path))
    await asyncio.to_thread(shots.mkdir, parents=True, exist_ok=True)
    await app.charge.send(1)
    await app.refund.send(2)
    await app.dead_letters(2)
    app.fail, app.calls = False, []
    dashboard = Dashboard(app.broker, token="s3cret", sample_interval=0.5)
    async with serving(dashboard) as url, chromium() as browser:
        await browser.go(f"{url}/?token=s3cret")
        text = await browser.wait_for_text(app.queue, "table.queues")
        assert "charge, refund" in text
        await asyncio.sleep(1.5)  # a few samples for the charts
        await browser.go(f"{url}/")
        await browser.screenshot(shots / "dashboard-overview.png")
        await browser.click(f'a[href="/queues/{app.queue}"]')
        await browser.wait_for_text("Boom", "table.letters")
        assert "<script>" in await browser.text("table.letters")  # shown as text, not run
        await browser.click("tr[data-message-id] details summary")  # a traceback or message opens
        await browser.screenshot(shots / "dashboard-queue.png")
        # Replay the refund with its own button; the worker then runs it.
        letters = await app.broker.dead_letters(app.queue)
        refund = next(letter for letter in letters if letter.actor_name == "refund")
        await browser.click(f'tr[data-message-id="{refund.message_id}"] button.replay-one')
        await browser.wait_for_text("Replayed 1 dead letter.", "p.notice")
        await browser.screenshot(shots / "dashboard-replayed.png")
        async with aqueue.Worker(app.broker, queues=[app.queue]):
            await app.broker.join(app.queue, timeout=20)
        assert app.calls == [-2]
        assert (await app.broker.queue_info(app.queue + ".XQ") or _Zero()).ready == 1
    for name in ("dashboard-overview.png", "dashboard-queue.png", "dashboard-replayed.png"):
        assert (shots / name).stat().st_size > 5000, name
