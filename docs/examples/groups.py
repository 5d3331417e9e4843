"""A group: members run in parallel, then one callback gets all their results."""

import asyncio

import aqueue

broker = aqueue.RabbitmqBroker()


@broker.actor(queue_name="thumbnails")
async def thumbnail(photo: str) -> str:
    await asyncio.sleep(0.1)  # resizing
    return f"{photo}-small.jpg"


@broker.actor(queue_name="thumbnails")
async def album_ready(album: str, thumbnails: list[str]) -> None:
    print(f"album {album}: {', '.join(thumbnails)}")


@broker.actor(queue_name="thumbnails")
async def album_failed(album: str) -> None:
    print(f"album {album}: a thumbnail failed")


async def main() -> None:
    async with broker:
        photos = ["beach", "dunes", "pier"]
        await aqueue.group(
            [thumbnail.message(photo) for photo in photos],
            on_complete=album_ready.message("holidays"),  # + the list of thumbnails
            on_failure=album_failed.message("holidays"),
            broker=broker,
        ).send()
        async with aqueue.Worker(broker, queues=["thumbnails"]):
            await broker.join("thumbnails", timeout=30)


if __name__ == "__main__":
    asyncio.run(main())
