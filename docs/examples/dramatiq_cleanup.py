"""After the move, to leave dramatiq_compat: delete orders.DQ and orders.XQ if empty."""

import asyncio
import os

import aio_pika


async def main(queue: str) -> None:
    url = os.getenv("AQUEUE_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
    async with await aio_pika.connect(url) as connection:
        for name in (f"{queue}.DQ", f"{queue}.XQ"):
            async with connection.channel() as channel:
                # Refused (PRECONDITION_FAILED), and nothing deleted, if a message is left.
                await channel.queue_delete(name, if_empty=True)
                print(f"deleted {name}")


if __name__ == "__main__":
    asyncio.run(main("orders"))
