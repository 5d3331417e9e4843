"""Running a worker from your own code instead of the aqueue command."""

import asyncio
import signal

import aqueue

from tasks import broker


async def run_worker(stop: asyncio.Event) -> None:
    """Consume until ``stop`` is set, then stop gracefully."""
    worker = aqueue.Worker(
        broker,
        queues=["emails", "reports"],
        concurrency=50,  # default limit for async actors
        threads=4,  # thread pool for blocking actors
        shutdown_timeout=10,
    )
    async with broker, worker:  # connect, then start consuming
        await stop.wait()
    # Leaving the block stopped the worker (running actors got up to 10 s to
    # finish, then were requeued) and closed the connection.


async def main() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await run_worker(stop)


if __name__ == "__main__":
    asyncio.run(main())
