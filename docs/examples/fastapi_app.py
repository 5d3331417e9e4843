"""Sending from a FastAPI application (FastAPI is not a dependency of aqueue).

Run with ``uvicorn fastapi_app:app``.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aqueue
from fastapi import FastAPI, HTTPException

from tasks import broker, send_welcome_email


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await broker.connect()  # the web process's one connection, opened at startup
    try:
        yield
    finally:
        await broker.close()


app = FastAPI(lifespan=lifespan)


@app.post("/users/{user_id}/welcome", status_code=202)
async def welcome(user_id: int, address: str) -> dict[str, str]:
    try:
        message = await send_welcome_email.send(user_id, address)
    except aqueue.ValidationError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    except aqueue.BrokerError as exc:
        raise HTTPException(status_code=503, detail=f"queue unavailable: {exc}") from None
    return {"message_id": message.message_id}
