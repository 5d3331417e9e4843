"""Changing the defaults for every actor, and a middleware of your own."""

import asyncio
import time

import aqueue
from aqueue.middleware import AgeLimit, Callbacks, Retries, TimeLimit


class Timing(aqueue.Middleware):
    """Print how long each message took."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}

    async def before_process_message(self, context: aqueue.MessageContext) -> None:
        self.started[context.message.message_id] = time.monotonic()

    async def after_process_message(self, context: aqueue.MessageContext) -> None:
        elapsed = time.monotonic() - self.started.pop(context.message.message_id)
        outcome = "failed" if context.exception is not None else "done"
        print(f"{context.actor.actor_name}: {outcome} in {elapsed:.1f} s")


broker = aqueue.RabbitmqBroker(
    middleware=[
        AgeLimit(max_age=3600),  # skip messages older than an hour
        TimeLimit(time_limit=60),
        Retries(max_retries=3, min_backoff=1, max_backoff=60),
        Callbacks(),
        Timing(),
    ]
)


@broker.actor(queue_name="thumbnails")
def make_thumbnail(path: str) -> None:
    time.sleep(0.2)  # stands in for the real work


async def main() -> None:
    async with broker:
        await make_thumbnail.send("cat.png")
        async with aqueue.Worker(broker, queues=["thumbnails"]):
            await broker.join("thumbnails", timeout=30)  # make_thumbnail: done in 0.2 s


if __name__ == "__main__":
    asyncio.run(main())
