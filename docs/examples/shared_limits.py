"""Limits shared by every worker: a payment API's quota, whatever the number of processes."""

import asyncio

import aqueue

broker = aqueue.RabbitmqBroker()

# At most 2 calls at once and 10 starts per second, across every worker process and host.
payments_api = aqueue.Limit("payments-api", concurrency=2, rate="10/s")
running = 0
most = 0


async def call_api(what: str) -> None:
    global running, most
    running += 1
    most = max(most, running)
    await asyncio.sleep(0.2)  # the API call
    running -= 1


@broker.actor(queue_name="payments", limits=[payments_api])
async def charge(order_id: int) -> None:
    await call_api(f"charge {order_id}")


@broker.actor(queue_name="payments", limits=[payments_api])  # shares the limit: same name
async def refund(order_id: int) -> None:
    await call_api(f"refund {order_id}")


async def main() -> None:
    async with broker:
        await charge.send_many([(n,) for n in range(6)])
        await refund.send(99)
        async with aqueue.Worker(broker, queues=["payments"]):
            await broker.join("payments", timeout=30)
        print(f"7 calls, at most {most} at once")  # 7 calls, at most 2 at once


if __name__ == "__main__":
    asyncio.run(main())
