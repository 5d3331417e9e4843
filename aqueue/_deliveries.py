"""What a broker hands a worker: deliveries to settle, and the subscriptions they come from."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

__all__ = ["Consumer", "Delivery", "DeliveryHandler"]


class Delivery(Protocol):
    """One message handed to a worker by a broker, to be settled exactly once."""

    @property
    def body(self) -> bytes: ...

    @property
    def redelivered(self) -> bool: ...

    @property
    def message_id(self) -> str | None:
        """The message id the publisher set (the AMQP property), if any."""

    @property
    def lost(self) -> bool:
        """Whether the broker took the message back already (its channel or consumer
        closed, e.g. with a lost connection): settling it does nothing, and the broker
        delivers it again, marked redelivered."""

    async def ack(self) -> None:
        """Tell the broker the message is done with."""

    async def requeue(self) -> None:
        """Give the message back to its queue, to be delivered again."""


class Consumer(Protocol):
    """A subscription of a worker to one queue."""

    @property
    def consuming(self) -> bool:
        """Whether the queue is subscribed now (False while subscribing again, or stopped)."""

    async def cancel(self) -> None:
        """Stop receiving new deliveries; deliveries already received stay valid."""

    async def close(self) -> None:
        """Release the subscription; unsettled deliveries go back to the queue."""


DeliveryHandler = Callable[[Delivery], Awaitable[None]]
