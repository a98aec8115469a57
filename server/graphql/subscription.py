"""Live job progress over websockets (graphql-transport-ws)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Annotated, Any

import strawberry
from strawberry.types import Info

from generators.manager import JobNotFound
from graph.errors import InvalidInput

from ..auth import IsAuthorized
from ..context import Context
from .errors import NotFoundError, problem
from .job import Job

JobProgressEvent = Annotated[Job | NotFoundError, strawberry.union("JobProgressEvent")]


@strawberry.type
class Subscription:
    @strawberry.subscription(
        permission_classes=[IsAuthorized],
        description="The job now, then each change (done/failed/total, tokens) while it runs; "
        "completes when it ends. A job that is not running gives its stored state once.",
    )
    async def job_progress(
        self, info: Info[Context, None], id: strawberry.ID
    ) -> AsyncGenerator[JobProgressEvent, None]:
        jobs = info.context.jobs
        event: Any
        try:
            async for state in jobs.watch(str(id)):
                event = Job.of(state, live=str(id) in jobs.running)
                yield event
        except JobNotFound as exc:
            event = problem(exc)
            yield event
        except InvalidInput:  # not a job id at all
            yield NotFoundError(message=f"no job {str(id)!r} (job ids start with job_)", id=id)
