"""The dashboard mounted in a FastAPI app, below /dashboard, behind a token."""

import contextlib
import os
from collections.abc import AsyncIterator

import aqueue
import aqueue.dashboard
from fastapi import FastAPI

broker = aqueue.RabbitmqBroker()  # AQUEUE_BROKER_URL, else amqp://localhost


@broker.actor(queue_name="payments")
async def charge(order_id: int) -> None:
    print(f"charging order {order_id}")


dashboard = aqueue.dashboard.app(broker, token=os.environ["AQUEUE_DASHBOARD_TOKEN"])


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with broker:  # one connection for the app's sends and the dashboard
        try:
            yield
        finally:
            await dashboard.close()  # a mounted app gets no lifespan of its own


app = FastAPI(lifespan=lifespan)
app.mount("/dashboard", dashboard)  # its pages, API and static files live below /dashboard


@app.post("/orders/{order_id}", status_code=202)
async def create_order(order_id: int) -> dict[str, str]:
    message = await charge.send(order_id)
    return {"message_id": message.message_id}
