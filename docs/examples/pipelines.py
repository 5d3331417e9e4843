"""A pipeline: each step runs once the one before succeeded, and gets its result."""

import asyncio

import aqueue

broker = aqueue.RabbitmqBroker()


@broker.actor(queue_name="reports")
async def count_orders(day: str) -> int:
    return 42  # a query, say


@broker.actor(queue_name="reports")
def render(title: str, orders: int) -> str:  # a blocking actor: it runs in a thread
    return f"{title}: {orders} orders"


@broker.actor(queue_name="emails")
async def mail(text: str) -> None:
    print(f"mailing {text!r}")


@broker.actor(queue_name="emails")
async def note(text: str) -> None:
    print(text)


async def main() -> None:
    async with broker:
        report = aqueue.pipeline(
            [
                count_orders.message("2026-12-04"),  # -> 42
                render.message("Daily report"),  # render("Daily report", 42)
                mail.message(),  # mail("Daily report: 42 orders")
                note.message_with_options(args=("report sent",), pipe_ignore=True),
            ],
            broker=broker,
        )
        await report.send()
        async with aqueue.Worker(broker, queues=["reports", "emails"]):
            await broker.join_all(timeout=30)


if __name__ == "__main__":
    asyncio.run(main())
