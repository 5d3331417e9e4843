"""Sending messages from a script."""

import asyncio

import aqueue

from tasks import broker, build_report, send_welcome_email


async def main() -> None:
    async with broker:
        message = await send_welcome_email.send(42, "ada@example.com")
        print(f"queued {message.message_id}")
        await build_report.send(report_id=7)

        try:
            await send_welcome_email.send("forty-two", "ada@example.com")
        except aqueue.ValidationError as exc:
            print(f"not sent: {exc}")


if __name__ == "__main__":
    asyncio.run(main())
