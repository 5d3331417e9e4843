"""A producer switched from Dramatiq to aqueue: the same messages, from a compat broker."""

import asyncio

from dramatiq_shared import broker, charge


async def main() -> None:
    async with broker:
        await charge.send(1001)  # was: charge.send(1001)
        await charge.send_with_options(args=(1002,), delay=2)  # was: delay=2000


if __name__ == "__main__":
    asyncio.run(main())
