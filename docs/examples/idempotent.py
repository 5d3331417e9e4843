"""An idempotent actor: a second run of the same message changes nothing."""

import asyncio
import sqlite3

import aqueue

broker = aqueue.RabbitmqBroker()
aqueue.set_broker(broker)

db = sqlite3.connect(":memory:")  # stands in for your database
db.executescript(
    """
    CREATE TABLE processed (message_id TEXT PRIMARY KEY);
    CREATE TABLE credits (user_id INTEGER, amount INTEGER);
    """
)


@aqueue.actor(queue_name="credits")
async def add_credit(user_id: int, amount: int) -> None:
    message_id = aqueue.current_message().message_id  # the same for every copy
    with db:  # one transaction: the key and the effect are written together, or neither
        try:
            db.execute("INSERT INTO processed VALUES (?)", (message_id,))
        except sqlite3.IntegrityError:
            print("a copy of a message that ran already: skipped")
            return
        db.execute("INSERT INTO credits VALUES (?, ?)", (user_id, amount))


async def main() -> None:
    async with broker:
        message = add_credit.message(7, 100)  # built once, so it keeps its message_id
        await broker.enqueue(message)
        await broker.enqueue(message)  # as a send retried after a timeout, say
        async with aqueue.Worker(broker, queues=["credits"]):
            await broker.join("credits", timeout=30)
    (total,) = db.execute("SELECT sum(amount) FROM credits WHERE user_id = 7").fetchone()
    print(f"user 7 has {total} in credits")


if __name__ == "__main__":
    asyncio.run(main())
