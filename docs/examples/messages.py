"""What a message looks like: build one without sending it."""

import aqueue


@aqueue.actor(queue_name="emails")
async def send_welcome_email(user_id: int, address: str) -> None: ...


message = send_welcome_email.message(42, address="ada@example.com")
print(message.encode().decode())

# The same message, decoded again: a Message is a msgspec Struct.
assert aqueue.Message.decode(message.encode()) == message
