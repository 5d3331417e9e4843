"""Another actor, sent when an actor succeeded or failed for good."""

import asyncio
from typing import Any

import aqueue

broker = aqueue.RabbitmqBroker()


@broker.actor(queue_name="exports")
async def export_done(message: dict[str, Any], url: str) -> None:
    print(f"export of report {message['args'][0]} is at {url}")


@broker.actor(queue_name="exports")
async def export_failed(message: dict[str, Any], error: dict[str, str]) -> None:
    print(f"export of report {message['args'][0]} failed: {error['type']}: {error['message']}")


@broker.actor(queue_name="exports", on_success=export_done, on_failure=export_failed, max_retries=0)
async def export(report_id: int) -> str:
    if report_id < 0:
        raise LookupError(f"no report {report_id}")
    return f"https://files.example.com/reports/{report_id}.csv"


async def main() -> None:
    async with broker:
        await export.send(7)
        await export.send(-1)
        async with aqueue.Worker(broker, queues=["exports"]):
            await broker.join("exports", timeout=30)


if __name__ == "__main__":
    asyncio.run(main())
