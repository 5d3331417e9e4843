"""An aqueue broker that shares its queues with Dramatiq producers and workers."""

import aqueue

# dramatiq_max_priority=N as well, if Dramatiq's RabbitmqBroker sets max_priority=N.
broker = aqueue.RabbitmqBroker(dramatiq_compat=True)


@broker.actor(queue_name="orders")
def charge(order_id: int) -> None:
    print(f"charging order {order_id}")
