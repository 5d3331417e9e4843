"""Messages delivered later: RabbitMQ holds them, no worker has to run meanwhile."""

import asyncio
import datetime

import aqueue

broker = aqueue.RabbitmqBroker()


@broker.actor(queue_name="reminders")
async def remind(user_id: int) -> None:
    print(f"reminder for user {user_id}")


async def main() -> None:
    async with broker:
        # In 2 seconds (a number of seconds, or a timedelta)...
        await remind.send_with_options(args=(42,), delay=datetime.timedelta(seconds=2))
        # ...or at a given time (timezone-aware).
        soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=1)
        await remind.send_with_options(args=(43,), eta=soon)

        async with aqueue.Worker(broker, queues=["reminders"]):
            await asyncio.sleep(5)  # reminder for user 43, then for user 42


if __name__ == "__main__":
    asyncio.run(main())
