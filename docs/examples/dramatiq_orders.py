"""The Dramatiq application being moved, as it was: its workers and its producer."""

import os

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

# The RabbitMQ the aqueue side uses too.
dramatiq.set_broker(RabbitmqBroker(url=os.getenv("AQUEUE_BROKER_URL"), confirm_delivery=True))


@dramatiq.actor(queue_name="orders")
def charge(order_id: int) -> None:
    print(f"charging order {order_id}")


if __name__ == "__main__":  # a producer
    charge.send(1)
    charge.send_with_options(args=(2,), delay=2000)  # milliseconds
