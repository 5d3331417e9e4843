"""The actors of an application, in a module that senders and workers both import."""

import time

import aqueue

# One broker, so one connection, per process. Without a URL it reads the
# AQUEUE_BROKER_URL environment variable, else uses amqp://guest:guest@127.0.0.1:5672/.
broker = aqueue.RabbitmqBroker()
aqueue.set_broker(broker)  # @aqueue.actor now registers actors with this broker


@aqueue.actor(queue_name="emails")
async def send_welcome_email(user_id: int, address: str) -> None:
    """I/O-bound work: an async actor, run on the worker's event loop."""
    print(f"welcome email sent to {address} (user {user_id})")


@aqueue.actor(queue_name="reports", concurrency=2)
def build_report(report_id: int) -> None:
    """Blocking work: a plain def actor, run in the worker's thread pool."""
    time.sleep(0.1)  # stands in for a blocking library call
    print(f"report {report_id} built")
