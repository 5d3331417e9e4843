"""Periodic actors: a nightly report and a quarter-hourly sync, each tick fired once."""

import datetime

import aqueue


@aqueue.actor(queue_name="reports")
async def sales_report(region: str) -> None:
    tick = aqueue.current_message().options["tick"]  # which run this is, e.g. 2026-12-05T01:30:00Z
    print(f"sales report for {region} at {tick}")


# At 02:30 every night, Paris time (01:30 or 00:30 UTC, depending on daylight saving time).
aqueue.schedule(sales_report, cron="30 2 * * *", timezone="Europe/Paris", args=("emea",))
# Every 15 minutes; a second schedule of the same actor needs a name of its own.
aqueue.schedule(
    sales_report, every=datetime.timedelta(minutes=15), args=("apac",), name="apac-sync"
)
