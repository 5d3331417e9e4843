"""Priorities: urgent messages overtake the bulk ones already waiting in their queue."""

import asyncio

import aqueue

broker = aqueue.RabbitmqBroker()


# A priority queue: its messages may have priorities from 0 (the default) to 9.
# concurrency=1 makes the worker's prefetch 1: what waits, waits in the queue, where
# RabbitMQ orders it, rather than in the worker.
@broker.actor(queue_name="invoices", max_priority=9, concurrency=1)
async def build_invoice(name: str) -> None:
    print(f"building {name}")


async def main() -> None:
    async with broker:
        for month in ("january", "february", "march"):
            await build_invoice.send(f"{month} statement")  # priority 0
        await build_invoice.send_many([("order 1041",), ("order 1042",)], priority=5)
        await build_invoice.send_with_options(args=("refund 77",), priority=9)

        async with aqueue.Worker(broker, queues=["invoices"]):
            await broker.join("invoices", timeout=30)


if __name__ == "__main__":
    asyncio.run(main())
