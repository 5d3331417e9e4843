"""The service's actors; a worker runs them: `aqueue worker examples.fastapi_app.tasks`."""

from __future__ import annotations

import asyncio
import os

import anyio

import aqueue

broker = aqueue.RabbitmqBroker()  # AQUEUE_BROKER_URL, else the local RabbitMQ
QUEUE = os.environ.get("FASTAPI_EXAMPLE_QUEUE", "emails")
PROCESSED_LOG = os.environ.get("FASTAPI_EXAMPLE_LOG")  # the test reads what was processed


@broker.actor(queue_name=QUEUE, max_retries=3, min_backoff=1)
async def send_welcome_email(user_id: int, email: str) -> None:
    await asyncio.sleep(0.01)  # talk to the mail service
    if PROCESSED_LOG:
        async with await anyio.open_file(PROCESSED_LOG, "a") as log:
            await log.write(f"{aqueue.current_message().message_id} {user_id}\n")
