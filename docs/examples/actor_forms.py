"""The ways to declare an actor."""

import asyncio

import aqueue


# 1. Bare: actor_name is the function's name, queue_name is "default",
#    registered with the default broker (aqueue.get_broker()).
@aqueue.actor
async def ping() -> str:
    return "pong"


# 2. With options.
@aqueue.actor(actor_name="thumbnails.resize", queue_name="images", concurrency=4)
def resize(path: str, width: int = 256) -> str:
    return f"{path} resized to {width}px"


# 3. On a broker of your own, whatever the default broker is.
billing_broker = aqueue.RabbitmqBroker("amqp://guest:guest@127.0.0.1:5672/")


@billing_broker.actor(queue_name="billing")
async def charge(order_id: int, cents: int) -> None:
    print(f"charging {cents} cents for order {order_id}")


if __name__ == "__main__":
    # Actors stay plain functions when called directly: no broker, no queue.
    print(asyncio.run(ping()))  # pong
    print(resize("cat.png", width=128))  # cat.png resized to 128px
    print(resize.actor_name, resize.queue_name, resize.concurrency)  # thumbnails.resize images 4
