"""Example actors: one async (runs on the event loop), one blocking (runs in a thread)."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import os
import threading
import time

import aqueue

broker = aqueue.RabbitmqBroker()  # AQUEUE_BROKER_URL, else amqp://guest:guest@127.0.0.1:5672/
QUEUE = os.environ.get("AQUEUE_DEMO_QUEUE", "aqueue-demo")


@broker.actor(queue_name=QUEUE)
async def fetch_page(url: str, attempt: int = 1) -> None:
    """Pretend to fetch a page: waiting on I/O never blocks other messages."""
    await asyncio.sleep(0.2)
    print(f"  [async] fetched {url} (attempt {attempt}) on the event loop", flush=True)


@broker.actor(queue_name=QUEUE, concurrency=4)
def make_thumbnail(image_id: int, requested_at: datetime.datetime) -> None:
    """A blocking call: it runs in the worker's thread pool, so heartbeats keep flowing."""
    time.sleep(0.3)
    digest = hashlib.sha256(str(image_id).encode()).hexdigest()[:12]
    waited = datetime.datetime.now(datetime.timezone.utc) - requested_at
    print(
        f"  [thread {threading.current_thread().name}] thumbnail {image_id} -> {digest}"
        f" ({waited.total_seconds():.2f} s after the request)",
        flush=True,
    )
