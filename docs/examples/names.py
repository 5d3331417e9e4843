"""Names aqueue refuses, when the actor is declared."""

import aqueue


async def job() -> None: ...


for queue_name in ["amq.jobs", "aqueue.jobs", "jobs.XQ", "jobs queue", "-jobs", "x" * 181]:
    try:
        aqueue.actor(queue_name=queue_name)(job)
    except aqueue.ActorDefinitionError as exc:
        print(f"refused: {exc}")
