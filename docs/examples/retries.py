"""Retries with backoff, and the message being processed."""

import asyncio

import aqueue

broker = aqueue.RabbitmqBroker()


@broker.actor(
    queue_name="webhooks",
    max_retries=5,  # then dead-letter (default 20)
    min_backoff=0.1,  # seconds or a timedelta (default 15 s)
    max_backoff=2,  # (default 1 hour)
    time_limit=30,  # (default 600 s)
)
async def deliver_webhook(url: str) -> None:
    attempt = aqueue.current_message().options.get("retries", 0) + 1
    print(f"attempt {attempt}: POST {url}")
    if attempt < 3:
        raise ConnectionError("endpoint unavailable")  # retried after a backoff


async def main() -> None:
    async with broker:
        await deliver_webhook.send("https://example.com/hook")
        # Options per message: this one is dead-lettered at its first failure.
        await deliver_webhook.send_with_options(args=("https://example.org/hook",), max_retries=0)
        async with aqueue.Worker(broker, queues=["webhooks"]):
            await broker.join("webhooks", timeout=30)  # waits for the retries too
        print(f"dead letters: {len(await broker.dead_letters('webhooks'))}")


if __name__ == "__main__":
    asyncio.run(main())
