"""A first actor.

Send a message with ``python first_actor.py``, then process it with
``aqueue worker first_actor``.
"""

import asyncio

import aqueue


@aqueue.actor(queue_name="greetings")
async def greet(name: str) -> None:
    print(f"Hello, {name}!")


async def main() -> None:
    async with aqueue.get_broker():  # connects now, closes at the end of the block
        await greet.send("world")


if __name__ == "__main__":
    asyncio.run(main())
