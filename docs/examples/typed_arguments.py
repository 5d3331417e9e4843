"""Typed arguments: checked when sending, decoded to the annotated types on the worker."""

import asyncio
import dataclasses
import datetime
import enum
import uuid
from decimal import Decimal

import aqueue
import msgspec


class Priority(enum.Enum):
    NORMAL = "normal"
    EXPRESS = "express"


class Address(msgspec.Struct):
    street: str
    city: str


@dataclasses.dataclass
class Item:
    sku: str
    quantity: int


@aqueue.actor(queue_name="orders")
async def ship_order(
    order_id: uuid.UUID,
    items: list[Item],
    address: Address,
    total: Decimal,
    ship_after: datetime.datetime,
    priority: Priority = Priority.NORMAL,
    note: str | None = None,
) -> None:
    # On the worker every argument arrives as its annotated type again.
    print(
        f"order {order_id}: {sum(item.quantity for item in items)} items to {address.city}, "
        f"{total!r}, {priority}, not before {ship_after.isoformat()}"
    )


async def main() -> None:
    async with aqueue.get_broker():
        await ship_order.send(
            uuid.UUID("12345678-1234-5678-1234-567812345678"),
            [Item("tea", 2), Item("cup", 1)],
            Address("1 Rue de la Paix", "Paris"),
            Decimal("19.90"),
            datetime.datetime(2030, 1, 1, 9, 0, tzinfo=datetime.timezone.utc),
            priority=Priority.EXPRESS,
        )

        try:  # nothing is published when the arguments do not fit
            await ship_order.send(
                "not a uuid",
                [],
                Address("1 Rue de la Paix", "Paris"),
                Decimal("0"),
                datetime.datetime.now(datetime.timezone.utc),
            )
        except aqueue.ValidationError as exc:
            print(f"not sent: {exc}")


if __name__ == "__main__":
    asyncio.run(main())
