"""The in-memory broker: no RabbitMQ, and no waiting for delays or retry backoffs."""

import asyncio

import aqueue

broker = aqueue.InMemoryBroker()  # the same interface as RabbitmqBroker


class CardDeclined(Exception):
    """Retrying will not help."""


@broker.actor(queue_name="reminders")
async def remind(user_id: int) -> None:
    print(f"reminder for user {user_id}")


@broker.actor(queue_name="webhooks", min_backoff=3600)  # an hour before the first retry
async def deliver_webhook(url: str) -> None:
    attempt = aqueue.current_message().options.get("retries", 0) + 1
    print(f"attempt {attempt}: POST {url}")
    if attempt < 3:
        raise ConnectionError("endpoint unavailable")


@broker.actor(queue_name="payments", throws=CardDeclined)
async def charge(order_id: int) -> None:
    raise CardDeclined(f"card declined for order {order_id}")


async def main() -> None:
    async with broker, aqueue.Worker(broker):
        # A delay runs on the real clock: this reminder is due tomorrow...
        await remind.send_with_options(args=(42,), delay=86400)
        print(f"delayed: {broker.delayed_count}")
        # ...unless the test jumps ahead. fast_forward() releases what is due within
        # the given seconds (everything without an argument).
        print(f"released: {await broker.fast_forward()}")
        await broker.join("reminders", timeout=5)

        # join(fast_forward=True) also releases retries at once, skipping their backoff.
        await deliver_webhook.send("https://example.com/hook")
        await broker.join("webhooks", timeout=5, fast_forward=True)

        # fail_fast=True raises the actor's own exception in the caller.
        await charge.send(17)
        try:
            await broker.join("payments", timeout=5, fail_fast=True)
        except CardDeclined as exc:
            print(f"charge failed: {exc!r}")


if __name__ == "__main__":
    asyncio.run(main())
