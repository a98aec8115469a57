"""Generation jobs: one stage over one scope, resumable; their progress and units."""

from __future__ import annotations

from enum import Enum
from typing import Any

import strawberry
from strawberry.types import Info

from generators.cost import job_cost, job_model
from generators.jobs import JobStatus, Progress, UnitStatus

from ..context import Context
from .pagination import Connection, paginate


@strawberry.enum(name="Stage", description="A GLAN stage, run as a job.")
class StageName(Enum):
    TAXONOMY = "taxonomy"
    SUBJECTS = "subjects"
    SYLLABUS = "syllabus"
    QUESTIONS = "questions"
    ANSWERS = "answers"
    JUDGE = "judge"
    FOLLOWUPS = "followups"


@strawberry.enum
class JobState(Enum):
    RUNNING = JobStatus.RUNNING
    COMPLETED = JobStatus.COMPLETED
    COMPLETED_WITH_FAILURES = JobStatus.COMPLETED_WITH_FAILURES
    CANCELLED = JobStatus.CANCELLED
    INTERRUPTED = JobStatus.INTERRUPTED
    FAILED = JobStatus.FAILED
    COST_CAPPED = JobStatus.COST_CAPPED
    INCOMPLETE = JobStatus.INCOMPLETE


@strawberry.enum
class UnitState(Enum):
    PENDING = UnitStatus.PENDING
    DONE = UnitStatus.DONE
    FAILED = UnitStatus.FAILED


def _int(row: dict[str, Any], key: str) -> int:
    value = row.get(key)
    return int(value) if isinstance(value, int | float) else 0


@strawberry.type(description="One resumable piece of a job (a discipline round, a subject...).")
class JobUnit:
    id: strawberry.ID
    target_id: strawberry.ID
    status: UnitState | None
    error: str | None
    raw: str | None = strawberry.field(description="The model's text when it could not be used.")
    dropped: str | None = strawberry.field(
        description="What the validators left out of its output, one rejection a line."
    )
    payload: str | None = strawberry.field(description="The unit's inputs, as JSON.")
    prompt_tokens: int
    completion_tokens: int
    updated_at: str | None
    batch: str | None = strawberry.field(
        description="The batch (see the batches query) it was last submitted in, if any."
    )

    @classmethod
    def of(cls, row: dict[str, Any]) -> JobUnit:
        try:
            status: UnitState | None = UnitState(row.get("status"))
        except ValueError:
            status = None
        return cls(
            id=strawberry.ID(str(row["id"])),
            target_id=strawberry.ID(str(row.get("target_id") or "")),
            status=status,
            error=row.get("error"),
            raw=row.get("raw"),
            dropped=row.get("dropped"),
            payload=row.get("payload"),
            prompt_tokens=_int(row, "prompt_tokens"),
            completion_tokens=_int(row, "completion_tokens"),
            updated_at=row.get("updated_at"),
            batch=row.get("batch"),
        )


@strawberry.type(
    description="A stage over a scope. Its id is a hash of stage, scope and options,"
    " so starting the same job again resumes it."
)
class Job:
    id: strawberry.ID
    kind: StageName
    scope: str = strawberry.field(description="The path it runs under ('' for everything).")
    status: JobState
    live: bool = strawberry.field(
        description="Running in this server now. A job the server was running when it "
        "stopped (INTERRUPTED, or RUNNING and not live) resumes when it starts again (unless "
        "GLAN_RESUME_JOBS is off), or when it is started again; cancelJob stops it for good."
    )
    total: int
    done: int
    failed: int
    prompt_tokens: int
    completion_tokens: int
    error: str | None
    skipped: int = strawberry.field(
        default=0,
        description="Units an earlier run had done, which this server's last run of the job "
        "skipped (0 when this server has not run it).",
    )
    failed_raw: int = strawberry.field(
        default=0,
        description="Of the units that failed in this server's last run of the job, those "
        "that kept the model's raw text (the rest got no text back).",
    )
    first_error: str | None = strawberry.field(
        default=None, description="The error of the first unit that failed in that run."
    )
    row: strawberry.Private[dict[str, Any] | None] = None

    @classmethod
    def of(cls, p: Progress, *, live: bool, row: dict[str, Any] | None = None) -> Job:
        return cls(
            id=strawberry.ID(p.job_id),
            kind=StageName(p.stage),
            scope=p.scope,
            status=_state(p.status),
            live=live and p.status == JobStatus.RUNNING,
            total=p.total,
            done=p.done,
            failed=p.failed,
            prompt_tokens=p.prompt_tokens,
            completion_tokens=p.completion_tokens,
            error=p.error,
            skipped=p.skipped,
            failed_raw=p.failed_raw,
            first_error=p.first_error,
            row=row,
        )

    @classmethod
    def of_row(cls, row: dict[str, Any]) -> Job:
        return cls(
            id=strawberry.ID(str(row["id"])),
            kind=StageName(row.get("kind")),
            scope=str(row.get("scope") or ""),
            status=_state(row.get("status")),
            live=False,
            total=_int(row, "total"),
            done=_int(row, "done"),
            failed=_int(row, "failed"),
            prompt_tokens=_int(row, "prompt_tokens"),
            completion_tokens=_int(row, "completion_tokens"),
            error=row.get("error"),
            row=row,
        )

    async def stored(self, info: Info[Context, None]) -> dict[str, Any]:
        if self.row is None:
            self.row = await info.context.run(info.context.store.jobs.get, str(self.id)) or {}
        return self.row

    @strawberry.field(description="The stage options that, with stage and scope, identify it.")
    async def params(self, info: Info[Context, None]) -> str | None:
        return (await self.stored(info)).get("params")

    @strawberry.field
    async def created_at(self, info: Info[Context, None]) -> str | None:
        return (await self.stored(info)).get("created_at")

    @strawberry.field
    async def updated_at(self, info: Info[Context, None]) -> str | None:
        return (await self.stored(info)).get("updated_at")

    @strawberry.field(
        description="The model its last run asked (null for a job stored before glan recorded "
        "it, unless its options name the model)."
    )
    async def model(self, info: Info[Context, None]) -> str | None:
        return job_model(await self.stored(info))

    @strawberry.field(description="The cost cap, in US dollars, its last run kept (null: none).")
    async def max_cost_usd(self, info: Info[Context, None]) -> float | None:
        value = (await self.stored(info)).get("max_cost")
        return float(value) if isinstance(value, int | float) and value > 0 else None

    @strawberry.field(
        description="What its last run sent requests through when not the live executor: "
        "batch (the Batch API, priced at its batch price) or offline (exported for an "
        "offline runner); null otherwise."
    )
    async def executor(self, info: Info[Context, None]) -> str | None:
        value = (await self.stored(info)).get("executor")
        return str(value) if value else None

    @strawberry.field(
        description="What its tokens so far cost, in US dollars, at its model's price in the "
        "server's price table (list prices: an estimate); null when the model has no price."
    )
    async def estimated_cost_usd(self, info: Info[Context, None]) -> float | None:
        row = await self.stored(info)
        spent = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}
        return job_cost({**row, **spent}, info.context.settings.price_table())

    @strawberry.field(description="Its units, e.g. status: FAILED with the model's raw output.")
    async def units(
        self,
        info: Info[Context, None],
        status: UnitState | None = None,
        first: int = 100,
        after: str | None = None,
    ) -> Connection[JobUnit]:
        units = await info.context.run(info.context.store.jobs.units, str(self.id))
        rows = sorted(units, key=lambda r: str(r["id"]))
        if status is not None:
            rows = [r for r in rows if r.get("status") == status.value]
        return paginate(rows, first, after, key=lambda r: str(r["id"]), wrap=JobUnit.of)


def _state(value: Any) -> JobState:
    try:
        return JobState(value)
    except ValueError:  # not written by this version of glan
        return JobState.FAILED


@strawberry.type(description="A job a mutation started, stopped or looked up.")
class JobPayload:
    job: Job
