"""Start a worker, send it a handful of tasks, wait for them, stop the worker gracefully."""

from __future__ import annotations

import asyncio
import datetime
import os
import signal
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import tasks  # noqa: E402

import aqueue  # noqa: E402


async def main() -> int:
    print("starting a worker: aqueue worker tasks --threads 4")
    worker = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "aqueue", "worker", "tasks", "--threads", "4"],
        cwd=HERE,
        env={**os.environ, "PYTHONPATH": str(HERE)},
    )
    try:
        async with tasks.broker:
            started = time.monotonic()
            sent = []
            for i in range(3):
                sent.append(await tasks.fetch_page.send(f"https://example.com/page/{i}"))
            now = datetime.datetime.now(datetime.timezone.utc)
            for image_id in range(100, 104):
                sent.append(await tasks.make_thumbnail.send(image_id, now))
            print(f"sent {len(sent)} confirmed messages in {time.monotonic() - started:.3f} s")
            try:
                await tasks.fetch_page.send("not-an-attempt-number", attempt="three")  # type: ignore[arg-type]
            except aqueue.ValidationError as exc:
                print(f"refused before publishing: {exc}")
            await tasks.broker.join(tasks.QUEUE, timeout=60)
        # The queue is empty; SIGTERM lets the worker finish what it is running, then exit.
        worker.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(worker.wait(), 60)
        print(f"worker exited with {code}; all {len(sent)} tasks done")
        return code
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
