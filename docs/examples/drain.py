"""Run a worker in this process until a queue is drained: handy in tests and scripts."""

import asyncio

import aqueue

from tasks import broker, send_welcome_email


async def main() -> None:
    async with broker:
        await send_welcome_email.send(42, "ada@example.com")
        async with aqueue.Worker(broker, queues=["emails"]):
            await broker.join("emails", timeout=30)


if __name__ == "__main__":
    asyncio.run(main())
