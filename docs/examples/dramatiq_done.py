"""The same actor once no Dramatiq process uses its queue: a broker without compat."""

import aqueue

broker = aqueue.RabbitmqBroker()


@broker.actor(queue_name="orders")
def charge(order_id: int) -> None:
    print(f"charging order {order_id}")
