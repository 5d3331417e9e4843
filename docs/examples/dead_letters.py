"""A payment that fails for good, a look at its dead letter, and a replay."""

import asyncio

import aqueue

broker = aqueue.RabbitmqBroker()


class CardDeclined(Exception):
    """Retrying will not help."""


@broker.actor(queue_name="payments", throws=CardDeclined)  # dead-lettered without retries
async def charge(order_id: int) -> None:
    raise CardDeclined(f"card declined for order {order_id}")


async def main() -> None:
    async with broker:
        await charge.send(17)
        async with aqueue.Worker(broker, queues=["payments"]):
            await broker.join("payments", timeout=30)

        # Read them: they stay in payments.XQ.
        for letter in await broker.dead_letters("payments"):
            print(letter.reason, letter.actor_name, letter.exception, letter.error, sep=" | ")
            assert letter.message is not None
            print(letter.message.args, letter.retries)

        # Once the cause is fixed: send them back to their queue, retry count reset.
        print(f"requeued {await broker.requeue_dead_letters('payments')}")


if __name__ == "__main__":
    asyncio.run(main())
