"""A FastAPI service whose handlers enqueue work with `await actor.send(...)`.

Run it:   uvicorn examples.fastapi_app.app:app
Worker:   aqueue worker examples.fastapi_app.tasks
"""

from __future__ import annotations

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

import aqueue
import aqueue.asgi

from .tasks import broker, send_welcome_email

# The broker connects at startup (one connection for the whole process) and closes at shutdown.
app = FastAPI(lifespan=aqueue.asgi.lifespan(broker))


class SignUp(BaseModel):
    user_id: int
    email: str


@app.post("/signups", status_code=202)
async def sign_up(body: SignUp) -> dict[str, str]:
    try:
        message = await send_welcome_email.send(body.user_id, body.email)
    except aqueue.ValidationError as exc:  # arguments the actor would refuse: nothing was sent
        raise HTTPException(status_code=422, detail=str(exc)) from None
    # send() returned: RabbitMQ confirmed the message, it is safe to answer.
    return {"message_id": message.message_id}
