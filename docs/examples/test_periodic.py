"""Testing periodic actors: fast_forward moves the in-memory broker's clock on."""

import aqueue

import periodic


async def test_a_day_of_schedules(aqueue_broker: aqueue.InMemoryBroker, aqueue_worker, capsys):
    await aqueue_broker.fast_forward(24 * 3600)  # every tick of the day passed fires, once
    await aqueue_broker.join("reports")
    printed = capsys.readouterr().out.splitlines()
    assert sum("emea" in line for line in printed) == 1
    assert sum("apac" in line for line in printed) == 96
    assert periodic.sales_report.broker is aqueue_broker
