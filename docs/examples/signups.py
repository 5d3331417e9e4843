"""An application module, declared with @aqueue.actor on the default broker."""

import aqueue

welcomed: list[str] = []  # stands in for a mail service


class InvalidAddress(Exception):
    """Retrying will not help."""


@aqueue.actor(queue_name="emails", throws=InvalidAddress)
async def send_welcome_email(address: str) -> None:
    if "@" not in address:
        raise InvalidAddress(f"cannot deliver to {address!r}")
    welcomed.append(address)


@aqueue.actor(queue_name="signups")
async def sign_up(user_id: int, address: str) -> None:
    # ...store the user, then send an email from another queue.
    await send_welcome_email.send(address)
